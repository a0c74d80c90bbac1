"""Reinforce-CAAT (paper Section 4.4, Algorithm 2, Eqs. 30-35; SPEC 6).

One step, per device:
  1. clean logits (inference mode) -> the six characteristics zeta, running
     standardisation (shared with Meta-CAAT, ``caat.feature_*`` keys);
  2. the strategy net f_Omega gives each sample a categorical over directions
     (adversary / anti-adversary) and bounds ({3..15}/255); each sample draws
     its strategy s_i = (dir_i, eps_i) from its own key;
  3. ONE PGD pass over the batch with per-sample sign, bound and loss:
     adversaries ascend KL(f(x) || f(x')), anti-adversaries descend CE;
  4. classifier update, Eq. 31:
       l_i = CE(f(x_i), y_i) + lam KL(f(x_i) || f(x_adv_i))   (adversary)
       l_i = CE(f(x_at_i), y_i)                               (anti-adversary)
     averaged over the batch, with two training-mode forwards (clean x, and
     the perturbed batch holding each sample's adversary or anti-adversary);
  5. REINFORCE (Eqs. 34-35, ``caat_jax.reinforce``): rewards r_i = L0_i
     (adversary) or -L1_i (anti-adversary) from step 4's losses (constants
     for Omega), optional baseline and entropy bonus; Omega takes an optimiser
     step after every K-th classifier step (the paper: "we update Omega every
     K times of updating W").

The policy gradient is computed every step and the update selected with
``jnp.where`` rather than ``lax.cond``: it costs one pass of a small MLP on
six features, while a ``cond`` makes XLA (on CPU, measured) optimise the rest
of the step much worse. The rewards for the update are the batch of the
update step only, as in Algorithm 2.

Fairness constraints are omitted here, as in the paper's derivation of Eq. 30.
The attack is ``caat.perturb``, the one fused attack every CAAT method uses.
"""

import jax
import jax.numpy as jnp
import optax

from caat_jax import characteristics, losses, reinforce, strategy
from caat_jax.checks import check, choice
from caat_jax.methods import base, caat

OPTIMIZERS = ("adam", "sgd")


def policy_net(config) -> strategy.PolicyNet:
  return strategy.PolicyNet(hidden=config.reinforce.hidden,
                            num_bounds=len(config.reinforce.bound_set))


def policy_optimizer(config) -> optax.GradientTransformation:
  """Descends the *negated* Eq. 34 objective: 'sgd' is Eq. 35 literally,
  'adam' makes the step size insensitive to the scale of the rewards."""
  r = config.reinforce
  return {"adam": optax.adam, "sgd": optax.sgd}[r.optimizer](r.learning_rate)


def bound_values(config) -> jax.Array:
  """The bound set in pixel units, [K]."""
  return jnp.asarray(config.reinforce.bound_set, jnp.float32) / 255.0


def init_extra(config, ctx: base.StepContext, key) -> dict:
  omega = policy_net(config).init(key, jnp.zeros((1, characteristics.NUM_FEATURES)))["params"]
  return {"policy": omega, "policy_opt": policy_optimizer(config).init(omega),
          "stats": characteristics.init_running_stats(ctx.num_classes),
          "reward_ema": reinforce.init_ema()}


def _select(pred, new, old):
  """``new`` where ``pred`` else ``old``, leaf by leaf (no lax.cond)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_step(config, ctx: base.StepContext):
  r, c = config.reinforce, config.caat
  axis, num_classes = ctx.axis_name, ctx.num_classes
  lam, k, baseline, momentum = float(r.lam), int(r.k), r.baseline, r.baseline_momentum
  entropy_bonus = r.entropy_bonus
  net, tx, bound_set = policy_net(config), policy_optimizer(config), bound_values(config)

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    b = x.shape[0]
    k_policy, k_attack = jax.random.split(key)
    extra = state.extra

    # 1. characteristics from the clean logits (inference mode).
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    clean = attack_fn(x)
    z, stats = characteristics.strategy_inputs(clean, y, ctx.class_counts, extra["stats"], c,
                                               axis, ctx.new_epoch(state.step))
    policy_fn = lambda omega: net.apply({"params": omega}, z)
    dir_logits, bound_logits = policy_fn(extra["policy"])

    # 2. each sample's strategy, keyed by its global batch position.
    direction, bound = reinforce.sample(ctx.sample_keys(k_policy, b), dir_logits, bound_logits)
    is_adv = direction == reinforce.ADVERSARY
    eps = bound_set[bound]

    # 3. adversaries and anti-adversaries in one attack pass.
    x_tilde = caat.perturb(ctx, attack_fn, x, y, clean, eps, ctx.sample_keys(k_attack, b),
                           is_adv)

    # 4. Eq. 31 on the classifier.
    def loss_fn(params):
      lc, bs = ctx.train_logits(params, state.batch_stats, x)
      lt, bs = ctx.train_logits(params, bs, x_tilde)
      ce = losses.cross_entropy(lc, y)
      l0 = ce + lam * losses.kl_divergence(lc, lt)  # adversaries: L0
      l1 = losses.cross_entropy(lt, y)  # anti-adversaries: L1
      return jnp.where(is_adv, l0, l1).mean(), (bs, ce, l0, l1, lc, lt)

    (loss, (bs, ce, l0, l1, lc, lt)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)

    # 5. REINFORCE on Omega (Eq. 34), applied after every K-th step (Eq. 35).
    reward = reinforce.rewards(direction, l0, l1)
    adv = reinforce.advantages(reward, baseline, ema=extra["reward_ema"], momentum=momentum,
                               axis_name=axis)

    def neg_objective(omega):
      dl, bl = policy_fn(omega)
      return -reinforce.objective(dl, bl, direction, bound, adv, entropy_bonus)

    pgrad = base.pmean(jax.grad(neg_objective)(extra["policy"]), axis)
    updates, new_opt = tx.update(pgrad, extra["policy_opt"], extra["policy"])
    update_now = (state.step + 1) % k == 0
    policy = _select(update_now, optax.apply_updates(extra["policy"], updates), extra["policy"])
    policy_opt = _select(update_now, new_opt, extra["policy_opt"])

    new_extra = dict(extra, policy=policy, policy_opt=policy_opt, stats=stats,
                     reward_ema=reinforce.ema_update(extra["reward_ema"], reward, momentum,
                                                     axis))
    new_state = base.apply_gradients(state, grads, bs, ctx, extra=new_extra)

    alpha = is_adv.astype(jnp.float32)
    correct_t = losses.correct(lt, y)
    n_adv, n_at = base.psum(alpha.sum(), axis), base.psum((1 - alpha).sum(), axis)
    metrics = base.pmean({
        "loss": loss, "alpha": alpha.mean(), "eps": eps.mean(),
        "clean_acc": losses.correct(lc, y).mean(),
        "p_adv": jax.nn.softmax(dir_logits)[:, 0].mean(),
        "entropy_direction": reinforce.entropy(dir_logits).mean(),
        "entropy_bound": reinforce.entropy(bound_logits).mean(),
        "reward": reward.mean()}, axis)
    # accuracy on each sample's own perturbation, per direction (0 if none drawn)
    metrics["adv_acc"] = base.psum((correct_t * alpha).sum(), axis) / jnp.maximum(n_adv, 1.0)
    metrics["anti_acc"] = (base.psum((correct_t * (1 - alpha)).sum(), axis)
                           / jnp.maximum(n_at, 1.0))
    metrics["policy_grad_norm"] = optax.tree.norm(pgrad)
    metrics["policy_updated"] = update_now.astype(jnp.float32)
    metrics.update(caat.strategy_stats(alpha, eps, y, batch, num_classes, axis))
    return new_state, metrics

  return step


def validate(config) -> None:
  r = config.reinforce
  check("reinforce.lam", r.lam >= 0, r.lam, ">= 0")
  check("reinforce.k", int(r.k) == r.k and r.k >= 1, r.k, "an integer >= 1")
  choice("reinforce.optimizer", r.optimizer, OPTIMIZERS)
  check("reinforce.learning_rate", r.learning_rate > 0, r.learning_rate, "> 0")
  check("reinforce.hidden", r.hidden >= 1, r.hidden, ">= 1")
  check("reinforce.bound_set", len(r.bound_set) >= 1 and all(v > 0 for v in r.bound_set),
        r.bound_set, "a non-empty tuple of positive bounds in 1/255 units")
  choice("reinforce.baseline", r.baseline, reinforce.BASELINES)
  check("reinforce.baseline_momentum", 0 <= r.baseline_momentum < 1, r.baseline_momentum,
        "in [0, 1)")
  check("reinforce.entropy_bonus", r.entropy_bonus >= 0, r.entropy_bonus, ">= 0")
  caat.validate_features(config)


def cost(config) -> float:
  """As TRADES (SPEC 11): one fused attack pass; the strategy net is an MLP on
  six features per example, negligible against F."""
  return base.attack_units(config) + 1.0 + 6.0


METHOD = base.Method("reinforce_caat", make_step, cost=cost, init_extra=init_extra,
                     validate=validate)
