"""Reinforce-CAAT (paper Section 4.4, Algorithm 2, Eqs. 30-35; docs/method.md §6).

One step, per device:
  1. clean logits (inference mode) -> the six characteristics zeta, running
     standardisation (shared with Meta-CAAT, ``caat.feature_*`` keys);
  2. the strategy net f_Omega gives each sample one categorical over the
     2 x K strategies s = (direction, bound) (``strategy.PolicyNet``); each
     sample draws its strategy from its own key;
  3. ONE PGD pass over the batch with per-sample sign, bound and loss:
     adversaries ascend KL(f(x) || f(x')), anti-adversaries descend CE (their
     drawn bounds scaled and capped by ``caat.anti_bound_scale`` / ``_cap``);
  4. classifier update, Eq. 31:
       l_i = f0_i CE(f(x_i), y_i) + lam f1_i KL(f(x_i) || f(x_adv_i))  (adversary)
       l_i = f0_i CE(f(x_at_i), y_i)                                  (anti-adversary)
     averaged over the batch (f0, f1: FRL's class-weight factors when
     ``fairness.enabled``, Eq. 19; else 1), with two training-mode forwards
     (clean x, and the perturbed batch holding each sample's adversary or
     anti-adversary);
  5. after every K-th classifier step (Algorithm 2, line 6), a REINFORCE
     ascent step on Omega with the rewards of this step's batch
     (``reinforce.reward``, see ``caat_jax.caat.reinforce``):
     * ``paper``: r_i = L0_i (adversary) or -L1_i (anti-adversary), Eq. 34;
     * ``lookahead``: r_i = (eta_1 / n) <grad_W L_meta(W), grad_W l_i(W)>,
       the first-order decrease of the robust meta loss (docs/method.md §5,
       ``caat.meta_loss_fn('robust')``) on a clean meta batch when W takes a
       step on sample i's loss alone. The n inner products come from one JVP
       of the per-sample losses along grad L_meta (``meta.jvp``); standardised
       per batch, plus ``reward_mix`` times the paper's reward, minus a
       leave-one-out baseline.

Cost: the look-ahead reward needs the meta batch's attack, the meta gradient
and the JVP; they run under ``lax.cond`` on update steps only, so a step
costs one attack pass plus (meta part) / K on average. The paper reward comes
free with step 4's losses, and its update is selected with ``jnp.where``
(a ``cond`` there made XLA on CPU optimise the rest of the step worse).
"""

import jax
import jax.numpy as jnp
import optax

from caat_jax import losses, meta
from caat_jax.caat import bounds, fairness, features, nets, objective, reinforce
from caat_jax.checks import check, choice
from caat_jax.meta import jvp as meta_jvp
from caat_jax.methods import base, perturb, strategy_stats

OPTIMIZERS = ("auto", "adam", "sgd")
BASELINES = ("auto",) + reinforce.BASELINES


def policy_net(config) -> nets.PolicyNet:
  return nets.PolicyNet(hidden=config.reinforce.hidden, num_bounds=len(config.reinforce.bound_set))


def resolved(config) -> tuple[str, str]:
  """(optimizer, baseline) with 'auto' resolved: the paper's reward takes
  Eq. 35 literally (plain SGD, no baseline); the look-ahead reward, whose
  scale follows eta_1 and the gradients, Adam and a leave-one-out baseline."""
  r = config.reinforce
  paper = r.reward == "paper"
  opt = r.optimizer if r.optimizer != "auto" else ("sgd" if paper else "adam")
  baseline = r.baseline if r.baseline != "auto" else ("none" if paper else "batch_mean")
  return opt, baseline


def policy_optimizer(config) -> optax.GradientTransformation:
  """Descends the *negated* REINFORCE objective: 'sgd' is Eq. 35 literally,
  'adam' makes the step size insensitive to the scale of the rewards."""
  return {"adam": optax.adam, "sgd": optax.sgd}[resolved(config)[0]](config.reinforce.learning_rate)


def bound_values(config) -> jax.Array:
  """The bound set in pixel units, [K]."""
  return jnp.asarray(config.reinforce.bound_set, jnp.float32) / 255.0


def init_extra(config, ctx: base.StepContext, key) -> dict:
  omega = policy_net(config).init(key, jnp.zeros((1, features.NUM_FEATURES)))["params"]
  return {
    "policy": omega,
    "policy_opt": policy_optimizer(config).init(omega),
    "stats": features.init_running_stats(ctx.num_classes),
    "reward_ema": reinforce.init_ema(),
    "fair": fairness.init(ctx.num_classes),
  }


def _select(pred, new, old):
  """``new`` where ``pred`` else ``old``, leaf by leaf (no lax.cond)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _margins_fn(config):
  """``fn(fair, y) -> [B]`` bound multipliers: FRL's ReMargin factors of the
  label's class in the margin modes (the learned bound scaled class-wise, as
  ReMargin scales the fixed one), else ones."""
  if _remargin(config):
    return lambda fair, y: fairness.margin_multipliers(fair["lambda2"])[y]
  return lambda fair, y: jnp.ones(y.shape, jnp.float32)


def _remargin(config) -> bool:
  """Whether FRL's ReMargin factors scale the drawn bounds (Eq. 19)."""
  return bool(config.fairness.enabled and config.fairness.mode in fairness.MARGIN_MODES)


def _reward_fn(config, ctx: base.StepContext):
  """``fn(state, batch, *, attack_fn, per_sample_fn, direction, l0, l1, lr,
  key) -> (rewards, info)``: the rewards [B] the policy ascends (before the
  baseline) and the pieces logged, chosen at build time
  (``reinforce.reward``). ``l0`` / ``l1`` [B] are each sample's Eq. 31 loss
  as an adversary / an anti-adversary."""
  r, axis = config.reinforce, ctx.axis_name
  if r.reward == "paper":

    def paper(state, batch, *, attack_fn, per_sample_fn, direction, l0, l1, lr, key):
      del state, batch, attack_fn, per_sample_fn, lr, key
      paper_reward = reinforce.paper_rewards(direction, l0, l1)
      return paper_reward, {
        "paper": paper_reward,
        "lookahead": jnp.zeros_like(paper_reward),
        "meta_loss": jnp.zeros((), jnp.float32),
      }

    return paper

  # The meta gradient is taken at W, so the meta adversaries are W's; with
  # fairness on, the meta loss carries FRL's class weights (as Meta-CAAT's).
  meta_loss = objective.meta_loss_fn(
    "robust",
    float(r.meta_lam),
    ctx,
    perturb.meta_perturbations(ctx),
    adversary_at="current",
    factors=fairness.factors_fn(config.fairness.mode if config.fairness.enabled else None),
  )
  mix = float(r.reward_mix)

  def lookahead(state, batch, *, attack_fn, per_sample_fn, direction, l0, l1, lr, key):
    k_adv, k_at = jax.random.split(key)
    meta_fn = meta_loss(state, attack_fn, batch, k_adv, k_at, state.extra["fair"])
    m_loss, g_meta = jax.value_and_grad(meta_fn)(state.params)
    problem = meta.MetaProblem(
      weights_fn=lambda omega: jnp.ones((direction.shape[0], 1)),
      per_sample_fn=per_sample_fn,
      lookahead_fn=meta.sgd_lookahead(lr),
      meta_loss_fn=meta_fn,
      lr=lr,
      axis_name=axis,
    )
    # one JVP gives every <grad L_meta, grad l_i> (docs/method.md §5's jvp machinery)
    dots = meta_jvp.per_sample_dots(problem, state.params, problem.pmean(g_meta))[:, 0]
    n = base.psum(jnp.asarray(direction.shape[0], jnp.float32), axis)
    lookahead_reward = reinforce.lookahead_rewards(dots, lr, n)
    paper_reward = reinforce.paper_rewards(direction, l0, l1)
    reward = reinforce.standardize(lookahead_reward, axis)
    if mix:
      reward = reward + mix * paper_reward
    return reward, {
      "paper": paper_reward,
      "lookahead": lookahead_reward,
      "meta_loss": base.pmean(m_loss, axis),
    }

  return lookahead


def make_step(config, ctx: base.StepContext):
  r, c = config.reinforce, config.caat
  axis, num_classes = ctx.axis_name, ctx.num_classes
  lam, k, momentum, entropy_bonus = float(r.lam), int(r.k), r.baseline_momentum, r.entropy_bonus
  _, baseline = resolved(config)
  lookahead = r.reward == "lookahead"
  net, tx, bound_set = policy_net(config), policy_optimizer(config), bound_values(config)
  # Fig. 8c's bin range: the largest bound times the largest ReMargin factor
  eps_max = (
    float(max(config.reinforce.bound_set))
    / 255.0
    * (fairness.MARGIN_RANGE[1] if _remargin(config) else 1.0)
  )
  factors = fairness.factors_fn(config.fairness.mode if config.fairness.enabled else None)
  margins = _margins_fn(config)
  anti_bound = bounds.anti_bound_fn(config)
  reward_fn = _reward_fn(config, ctx)

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    b = x.shape[0]
    k_policy, k_attack, k_meta = jax.random.split(key, 3)
    extra = state.extra

    # 1. characteristics from the clean logits (inference mode).
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    clean = attack_fn(x)
    z, stats = features.strategy_inputs(
      clean, y, ctx.class_counts, extra["stats"], c, axis, ctx.new_epoch(state.step)
    )
    policy_fn = lambda omega: net.apply({"params": omega}, z)
    logits = policy_fn(extra["policy"])  # [B, 2, K]

    # 2. each sample's strategy, keyed by its global batch position.
    direction, bound = reinforce.sample(ctx.sample_keys(k_policy, b), logits)
    is_adv = direction == reinforce.ADVERSARY
    eps = bound_set[bound] * margins(extra["fair"], y)
    eps = jnp.where(is_adv, eps, anti_bound(eps))  # caat.anti_bound_scale / _cap

    # 3. adversaries and anti-adversaries in one attack pass.
    x_tilde = perturb.perturb(
      ctx, attack_fn, x, y, clean, eps=eps, keys=ctx.sample_keys(k_attack, b), adversary=is_adv
    )
    natural_factor, boundary_factor = factors(extra["fair"], y, axis)

    # 4. Eq. 31 on the classifier.
    def per_sample_fn(params):
      """W -> ([B, 1] each sample's Eq. 31 loss under its strategy, aux)."""
      logits_clean, bs = ctx.train_logits(params, state.batch_stats, x)
      logits_tilde, bs = ctx.train_logits(params, bs, x_tilde)
      ce = losses.cross_entropy(logits_clean, y)
      # adversaries: L0; anti-adversaries: L1 (Eq. 31)
      l0 = natural_factor * ce + lam * boundary_factor * losses.kl_divergence(
        logits_clean, logits_tilde
      )
      l1 = natural_factor * losses.cross_entropy(logits_tilde, y)
      return jnp.where(is_adv, l0, l1)[:, None], (bs, ce, l0, l1, logits_clean, logits_tilde)

    (loss, (bs, ce, l0, l1, logits_clean, logits_tilde)), grads = jax.value_and_grad(
      lambda p: meta.weighted_loss(per_sample_fn, p, jnp.ones((b, 1))), has_aux=True
    )(state.params)
    l0, l1 = jax.lax.stop_gradient(l0), jax.lax.stop_gradient(l1)

    # 5. REINFORCE on Omega after every K-th classifier step (Algorithm 2).
    def update(carry):
      omega, opt, ema = carry
      reward, info = reward_fn(
        state,
        batch,
        attack_fn=attack_fn,
        per_sample_fn=per_sample_fn,
        direction=direction,
        l0=l0,
        l1=l1,
        lr=ctx.schedule(state.step),
        key=k_meta,
      )
      adv = reinforce.advantages(reward, baseline, ema=ema, momentum=momentum, axis_name=axis)
      if lookahead:  # unit-variance advantages: the policy's step ignores the reward scale
        adv = reinforce.standardize(adv, axis)
      pgrad = base.pmean(
        jax.grad(
          lambda om: -reinforce.objective(policy_fn(om), direction, bound, adv, entropy_bonus)
        )(omega),
        axis,
      )
      updates, opt = tx.update(pgrad, opt, omega)
      info = dict(info, reward=reward, grad_norm=optax.tree.norm(pgrad))
      return (
        (
          optax.apply_updates(omega, updates),
          opt,
          reinforce.ema_update(ema, reward, momentum, axis),
        ),
        info,
      )

    def skip(carry):
      zeros = jnp.zeros((b,), jnp.float32)
      scalar = jnp.zeros((), jnp.float32)
      return carry, {
        "paper": zeros,
        "lookahead": zeros,
        "meta_loss": scalar,
        "reward": zeros,
        "grad_norm": scalar,
      }

    carry = (extra["policy"], extra["policy_opt"], extra["reward_ema"])
    update_now = (state.step + 1) % k == 0
    if k == 1:
      (policy, policy_opt, ema), info = update(carry)
    elif lookahead:  # the meta batch's attack, meta gradient and JVP: update steps only
      (policy, policy_opt, ema), info = jax.lax.cond(update_now, update, skip, carry)
    else:  # free rewards: compute, then keep or drop
      new, info = update(carry)
      (policy, policy_opt, ema) = _select(update_now, new, carry)
      info = _select(update_now, info, skip(carry)[1])

    new_extra = dict(extra, policy=policy, policy_opt=policy_opt, stats=stats, reward_ema=ema)
    new_state = base.apply_gradients(state, grads, bs, ctx, extra=new_extra)

    metrics = strategy_stats.reinforce_metrics(
      policy_logits=logits,
      direction=direction,
      eps=eps,
      labels=y,
      batch=batch,
      loss=loss,
      logits_clean=logits_clean,
      logits_tilde=logits_tilde,
      update_now=update_now,
      info=info,
      num_classes=num_classes,
      axis=axis,
      eps_max=eps_max,
      clean_eval_logits=clean,
    )
    return new_state, metrics

  return step


def validate(config) -> None:
  r = config.reinforce
  choice("reinforce.reward", r.reward, reinforce.REWARDS)
  check("reinforce.reward_mix", r.reward_mix >= 0, r.reward_mix, ">= 0")
  check("reinforce.meta_lam", r.meta_lam >= 0, r.meta_lam, ">= 0")
  check("reinforce.lam", r.lam >= 0, r.lam, ">= 0")
  check("reinforce.k", int(r.k) == r.k and r.k >= 1, r.k, "an integer >= 1")
  choice("reinforce.optimizer", r.optimizer, OPTIMIZERS)
  check("reinforce.learning_rate", r.learning_rate > 0, r.learning_rate, "> 0")
  check("reinforce.hidden", r.hidden >= 1, r.hidden, ">= 1")
  check(
    "reinforce.bound_set",
    len(r.bound_set) >= 1 and all(v > 0 for v in r.bound_set),
    r.bound_set,
    "a non-empty tuple of positive bounds in 1/255 units",
  )
  choice("reinforce.baseline", r.baseline, BASELINES)
  check(
    "reinforce.baseline_momentum", 0 <= r.baseline_momentum < 1, r.baseline_momentum, "in [0, 1)"
  )
  check("reinforce.entropy_bonus", r.entropy_bonus >= 0, r.entropy_bonus, ">= 0")
  if r.reward == "lookahead":
    check("meta.batch_size", config.meta.batch_size >= 1, config.meta.batch_size, ">= 1")
  features.validate_features(config)
  bounds.validate_anti_bound(config)
  fairness.validate_fairness(config)


def cost(config) -> float:
  """F per example (docs/method.md §11): one fused attack pass, a clean forward, training
  on clean and perturbed inputs (as TRADES); for the look-ahead reward, plus
  on every K-th step the meta part: the meta batch's clean forward, attack
  and robust-loss gradient (clean and adversarial inputs), scaled by meta
  batch / batch, and the JVP of the per-sample losses (a forward-mode pass
  over clean and perturbed inputs, ~4F). The strategy net is an MLP on six
  features, negligible against F."""
  units = base.attack_units(config) + 1.0 + 6.0
  if config.reinforce.reward != "lookahead":
    return units
  meta_batch = (1.0 + base.attack_units(config) + 6.0) * config.meta.batch_size
  meta_part = meta_batch / config.batch_size + 4.0
  return units + meta_part / config.reinforce.k


METHOD = base.Method(
  "reinforce_caat",
  make_step,
  cost=cost,
  init_extra=init_extra,
  validate=validate,
  epoch_hook=base.EpochHook(fairness.epoch_validation, fairness.epoch_update),
  meta_batch=lambda config: config.reinforce.reward == "lookahead",
  needs_meta_set=lambda config: config.reinforce.reward == "lookahead" or config.fairness.enabled,
  switches=("fairness.enabled",),
)
