"""Meta-CAAT (paper Algorithm 1, Eqs. 25-29; docs/method.md §5).

One step, per device:
  1. clean logits (inference mode) -> the six characteristics zeta, running
     standardisation -> [alpha_i, beta_i] = softmax(f_Omega(zeta_i) / tau)
     (``caat.weights='hard'``: 1[alpha_i >= beta_i], straight-through);
  2. bounds eps_i (fixed / remargin / grad); the anti-adversaries' are
     scaled and capped (``caat.anti_bound_scale`` / ``anti_bound_cap``);
  3. adversaries (ascend KL) and anti-adversaries (descend CE) in ONE attack
     call over the stacked batch [x; x] with per-sample sign and loss;
  4. every ``meta.interval`` steps: meta-gradient of the meta loss through a
     one-step look-ahead W_hat(Omega) (``meta.variant``), Adam step on Omega;
  5. [alpha, beta] recomputed with the new Omega (no gradient), real
     optimiser step on W with the same batch and perturbations.
``meta.schedule=reuse_step`` swaps 4 and 5: the real step, with the current
weights, is the look-ahead of the meta step (``MetaProblem.lookahead_point``),
so Omega's update is one step stale and the look-ahead pass is saved.

Per-sample training loss (Eq. 27):
  l_i = alpha_i (f0_i CE(f(x_i), y_i) + lam f1_i KL(f(x_i) || f(x_adv_i)))
        + beta_i f0_i CE(f(x_at_i), y_i)
with FRL's class-weight factors f0, f1 when ``fairness.enabled`` (else 1).
"""

import jax
import jax.numpy as jnp
import optax

from caat_jax import data, losses, meta
from caat_jax.caat import bounds, fairness, features, nets, objective
from caat_jax.checks import ConfigError, check, choice
from caat_jax.methods import base, perturb, strategy_stats

DIRECTIONS = ("combined", "adversarial_only", "rule", "oracle")
FIXED_DIRECTIONS = ("rule", "oracle")  # no learned weights: the fixed bound
LOOKAHEADS = ("sgd", "sgd_momentum_wd")
SCHEDULES = ("lookahead", "reuse_step")
WEIGHTS = ("soft", "hard")


def weighting_net(config) -> nets.WeightingNet:
  return nets.WeightingNet(hidden=config.caat.hidden, tau=config.caat.tau)


def init_extra(config, ctx: base.StepContext, key) -> dict:
  omega = weighting_net(config).init(key, jnp.zeros((1, features.NUM_FEATURES)))["params"]
  return {
    "wnet": omega,
    "wnet_opt": optax.adam(config.meta.learning_rate).init(omega),
    "stats": features.init_running_stats(ctx.num_classes),
    "fair": fairness.init(ctx.num_classes),
  }


# -- choices made when the step is built ---------------------------------------


def _weights_fn(direction: str, wnet, class_counts):
  """``fn(omega, z, y, corrupted) -> [B, 2]`` (alpha, beta) per sample
  (``corrupted``: bool [B], whose training label the noise changed)."""
  if direction == "combined":
    return lambda omega, z, y, corrupted: wnet.apply({"params": omega}, z)
  if direction == "adversarial_only":
    return lambda omega, z, y, corrupted: jnp.tile(jnp.array([[1.0, 0.0]]), (y.shape[0], 1))
  if direction == "oracle":
    # Issue 17's "best fixed treatment" oracle: clean samples adversarial,
    # corrupted ones anti-adversarial (plain CE with caat.anti_bound_scale=0).
    def oracle(omega, z, y, corrupted):
      beta = corrupted.astype(jnp.float32)
      return jnp.stack([1.0 - beta, beta], axis=-1)

    return oracle
  # "rule", Table 9's "Without": head classes (count at or above the median)
  # anti-adversarial, tail classes adversarial.
  counts = jnp.asarray(class_counts, jnp.float32)

  def rule(omega, z, y, corrupted):
    beta = (counts[y] >= jnp.median(counts)).astype(jnp.float32)
    return jnp.stack([1.0 - beta, beta], axis=-1)

  return rule


def _straight_through(weights):
  """One direction per sample, the paper's {0, 1} choice: the forward value
  is alpha = 1[alpha >= beta], beta = 1 - alpha, and the gradient is the soft
  alpha's (a straight-through estimator: hard + (alpha - stop_gradient(alpha)),
  exactly 0 or 1 forward)."""

  def hard(omega, z, y, corrupted):
    w = weights(omega, z, y, corrupted)
    alpha = w[:, 0]
    chosen = jax.lax.stop_gradient((alpha >= w[:, 1]).astype(w.dtype))
    alpha = chosen + (alpha - jax.lax.stop_gradient(alpha))
    return jnp.stack([alpha, 1.0 - alpha], axis=-1)

  return hard


def weights_fn(config, class_counts):
  """``fn(omega, z, y, corrupted) -> [B, 2]`` (alpha, beta) per sample, as the
  step uses them (``caat.direction``, ``caat.weights``)."""
  c = config.caat
  weights = _weights_fn(c.direction, weighting_net(config), class_counts)
  return _straight_through(weights) if c.weights == "hard" else weights


def _lookahead_fn(kind: str, optimizer_cfg):
  """``fn(state, lr) -> lookahead(W, g)``."""
  if kind == "sgd":
    return lambda state, lr: meta.sgd_lookahead(lr)
  momentum, wd = optimizer_cfg.momentum, optimizer_cfg.weight_decay

  def momentum_wd(state, lr):
    trace = optax.tree_utils.tree_get(state.opt_state, "trace")
    if trace is None:
      trace = jax.tree.map(jnp.zeros_like, state.params)
    return meta.sgd_momentum_wd_lookahead(lr, momentum, wd, trace)

  return momentum_wd


def make_step(config, ctx: base.StepContext):
  c, m = config.caat, config.meta
  axis, num_classes, lam = ctx.axis_name, ctx.num_classes, float(c.lam)
  # Setting I/II (adversarial_only): the anti-adversary's weight is 0 for
  # every sample, so neither its attack nor its forward pass runs; the step
  # is then TRADES with beta = lam (same keys, same BatchNorm passes).
  anti = c.direction != "adversarial_only"
  learned = c.direction == "combined"
  weights = weights_fn(config, ctx.class_counts)
  bound_kind = "fixed" if c.direction in FIXED_DIRECTIONS else c.bound
  bound = bounds.bound_fn(
    bound_kind, ctx, grad_offset=c.grad_bound_offset, grad_point=c.grad_bound_point, anti=anti
  )
  eps_max = bounds.bound_max(bound_kind, ctx.attack.eps, c.grad_bound_offset)
  anti_bound = bounds.anti_bound_fn(config)
  factors = fairness.factors_fn(config.fairness.mode if config.fairness.enabled else None)
  lookahead = _lookahead_fn(m.lookahead, config.optimizer)
  meta_loss = objective.meta_loss_fn(
    m.objective,
    lam,
    ctx,
    perturb.meta_perturbations(ctx),
    adversary_at=m.adversary_at,
    factors=factors,
  )
  variant = meta.make(m)
  reuse = m.schedule == "reuse_step"
  meta_tx = optax.adam(m.learning_rate)
  interval = int(m.interval)
  feature_cfg = c

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    if anti:
      k_adv, k_at, k_meta_adv, k_meta_at = jax.random.split(key, 4)
    else:
      k_adv, k_at, k_meta_adv, k_meta_at = key, None, None, None
    extra = state.extra
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)

    # 1. characteristics and weights.
    clean = attack_fn(x)
    z, stats = features.strategy_inputs(
      clean, y, ctx.class_counts, extra["stats"], feature_cfg, axis, ctx.new_epoch(state.step)
    )
    corrupted = base.corrupted_mask(batch, y)
    weights_fn = lambda om: weights(om, z, y, corrupted)
    w_old = weights_fn(extra["wnet"])

    # 2. bounds; 3. adversaries and anti-adversaries: one attack over [x; x].
    eps = bound(attack_fn, x, y, clean, weights=w_old, fair=extra["fair"], k_adv=k_adv, k_at=k_at)
    if anti:
      eps_at = anti_bound(eps)
      x_adv, x_at = perturb.adversaries_and_anti(
        ctx, attack_fn, x, y, clean, eps=eps, k_adv=k_adv, k_at=k_at, eps_at=eps_at
      )
    else:
      x_adv, x_at = perturb.adversaries(ctx, attack_fn, x, y, clean, eps, k_adv), None
    natural_factor, boundary_factor = factors(extra["fair"], y, axis)

    def per_sample_fn(params):
      logits_clean, bs = ctx.train_logits(params, state.batch_stats, x)
      logits_adv, bs = ctx.train_logits(params, bs, x_adv)
      ce = losses.cross_entropy(logits_clean, y)
      kl = losses.kl_divergence(logits_clean, logits_adv)
      adversarial_term = natural_factor * ce + lam * boundary_factor * kl
      if not anti:
        return adversarial_term[:, None], (bs, logits_clean, logits_adv, logits_adv)
      logits_anti, bs = ctx.train_logits(params, bs, x_at)
      anti_term = natural_factor * losses.cross_entropy(logits_anti, y)
      terms = jnp.stack([adversarial_term, anti_term], axis=-1)
      return terms, (bs, logits_clean, logits_adv, logits_anti)

    lr = ctx.schedule(state.step)
    k_variant = jax.random.fold_in(key, 0x5A3E)  # stochastic variants; same on every device

    # 4. meta step on Omega (with ``point``: the look-ahead W_hat already taken).
    def do_meta(omega, opt, point):
      problem = meta.MetaProblem(
        weights_fn=weights_fn,
        per_sample_fn=per_sample_fn,
        lookahead_fn=lookahead(state, lr),
        meta_loss_fn=meta_loss(state, attack_fn, batch, k_meta_adv, k_meta_at, extra["fair"]),
        lr=lr,
        axis_name=axis,
        key=k_variant,
        lookahead_point=point,
      )
      grad, info = variant(problem, omega, state.params)
      updates, opt = meta_tx.update(grad, opt, omega)
      return optax.apply_updates(omega, updates), opt, info["meta_loss"], optax.tree.norm(grad)

    def skip_meta(omega, opt, point):
      return omega, opt, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

    def meta_step(point):
      if not learned:
        return jnp.asarray(False), *skip_meta(extra["wnet"], extra["wnet_opt"], point)
      if interval == 1:  # no cond: XLA optimises a branch-free step better
        return jnp.asarray(True), *do_meta(extra["wnet"], extra["wnet_opt"], point)
      now = state.step % interval == 0
      return now, *jax.lax.cond(now, do_meta, skip_meta, extra["wnet"], extra["wnet_opt"], point)

    def real_step(w_step):
      w_used = w_step if anti else w_step[:, :1]
      (loss, (bs, *logits)), grads = jax.value_and_grad(
        lambda p: meta.weighted_loss(per_sample_fn, p, w_used), has_aux=True
      )(state.params)
      return loss, logits, base.apply_gradients(state, grads, bs, ctx)

    if reuse:
      # 5. first: the real update with the current weights; it is the
      # look-ahead of 4., and Omega's update reaches the next step's weights.
      w_new = w_old
      loss, (logits_clean, logits_adv, logits_anti), stepped = real_step(w_old)
      meta_now, omega, wnet_opt, m_loss, m_norm = meta_step(stepped.params)
    else:
      meta_now, omega, wnet_opt, m_loss, m_norm = meta_step(None)
      # 5. the real update with the new weights.
      w_new = jax.lax.stop_gradient(weights_fn(omega)) if learned else w_old
      loss, (logits_clean, logits_adv, logits_anti), stepped = real_step(w_new)
    new_extra = dict(extra, wnet=omega, wnet_opt=wnet_opt, stats=stats)
    new_state = stepped.replace(extra=new_extra)

    took_meta_step = meta_now.astype(jnp.float32)
    metrics = {
      "loss": loss,
      "alpha": w_new[:, 0].mean(),
      "clean_acc": losses.correct(logits_clean, y).mean(),
      "adv_acc": losses.correct(logits_adv, y).mean(),
      "eps": eps.mean(),
    }
    if anti:
      metrics["anti_acc"] = losses.correct(logits_anti, y).mean()
      metrics["eps_anti"] = eps_at.mean()
    metrics = base.pmean(metrics, axis)
    # averaged over the steps that took a meta step only
    metrics["ratio/meta_loss/num"] = (m_loss * took_meta_step)[None]
    metrics["ratio/meta_loss/den"] = took_meta_step[None]
    metrics["meta_grad_norm"] = m_norm
    metrics.update(
      strategy_stats.strategy_stats(
        w_new[:, 0], eps, y, batch, num_classes, axis, clean_logits=clean, eps_max=eps_max
      )
    )
    return new_state, metrics

  return step


def cost(config) -> float:
  """F per example (docs/method.md §11): two attack passes, a clean forward and the real
  update over three inputs, plus the meta part of the configured variant
  (its objective scaled by meta batch / batch; divided by ``meta.interval``)."""
  c, m = config.caat, config.meta
  attack = base.attack_units(config)
  if c.direction == "adversarial_only":  # TRADES with beta = lam (Setting I/II)
    return attack + 1.0 + 6.0 + (2.0 if c.bound == "grad" else 0.0)
  units = 2 * attack + 1.0 + 9.0
  if c.bound == "grad" and c.direction not in FIXED_DIRECTIONS:
    units += 4.0  # two input gradients, each at its attack's start point
  if c.direction != "combined":
    return units
  objective_cost = {
    "clean_ce": 3.0,
    "robust": attack + 1.0 + 6.0,
    "official": 2 * attack + 1.0 + 9.0,
  }[m.objective]
  # The look-ahead, the JVP and a second-order pass run on the training batch
  # (per_sample_fn); only the objective runs on the meta batch.
  costs = meta.Costs(
    lookahead=9.0,
    objective=objective_cost * m.batch_size / config.batch_size,
    jvp=6.0,
    second_order=18.0,
  )
  meta_part = meta.cost(m, costs)
  if m.schedule == "reuse_step":  # the real update is the look-ahead
    meta_part -= costs.lookahead
  return units + meta_part / m.interval


def validate(config) -> None:
  c, m = config.caat, config.meta
  check("caat.lam", c.lam >= 0, c.lam, ">= 0")
  check("caat.tau", c.tau > 0, c.tau, "> 0")
  check("caat.hidden", c.hidden >= 1, c.hidden, ">= 1")
  choice("caat.direction", c.direction, DIRECTIONS)
  if c.direction == "oracle" and not data.has_label_noise(config.data):
    raise ConfigError(
      "config.caat.direction='oracle' makes the corrupted samples anti-adversarial, but "
      f"config.data.noise_rate={config.data.noise_rate!r} with config.data.noise_type="
      f"{config.data.noise_type!r} corrupts none; add label noise or choose another "
      "direction."
    )
  choice("caat.weights", c.weights, WEIGHTS)
  choice("caat.bound", c.bound, bounds.BOUNDS)
  choice("caat.grad_bound_point", c.grad_bound_point, bounds.GRAD_POINTS)
  features.validate_features(config)
  bounds.validate_anti_bound(config)
  choice("meta.variant", m.variant, tuple(meta.VARIANTS))
  choice("meta.objective", m.objective, objective.META_OBJECTIVES)
  choice("meta.lookahead", m.lookahead, LOOKAHEADS)
  choice("meta.adversary_at", m.adversary_at, objective.ADVERSARY_AT)
  check("meta.k", m.k >= 1, m.k, ">= 1")
  meta.validate(m)
  _validate_schedule(config)
  check("meta.interval", m.interval >= 1, m.interval, ">= 1")
  check("meta.batch_size", m.batch_size >= 1, m.batch_size, ">= 1")
  check("meta.learning_rate", m.learning_rate > 0, m.learning_rate, "> 0")
  fairness.validate_fairness(config)
  if c.bound == "remargin" and not config.fairness.enabled:
    raise ConfigError(
      "config.caat.bound='remargin' takes its margins from FRL's multipliers; "
      "set config.fairness.enabled=True (or use caat.bound='fixed' or 'grad')."
    )


def _validate_schedule(config) -> None:
  m = config.meta
  choice("meta.schedule", m.schedule, SCHEDULES)
  if m.schedule != "reuse_step" or config.caat.direction != "combined":
    return
  if not meta.reuses_lookahead(m):
    raise ConfigError(
      f"config.meta.schedule='reuse_step' hands the variant the real update as its look-ahead, "
      f"but config.meta.variant={m.variant!r} (with its options) cannot use it or saves nothing "
      "by it; use jvp, layerwise with meta.layer_scope='full', or neumann with "
      "meta.neumann_steps=0, or meta.schedule='lookahead'."
    )
  if config.optimizer.nesterov:
    raise ConfigError(
      "config.meta.schedule='reuse_step' needs the real update to be affine in the gradient "
      "with slope -lr (the meta-gradient assumes it); config.optimizer.nesterov=True has slope "
      "-lr (1 + momentum): set it False or use meta.schedule='lookahead'."
    )


METHOD = base.Method(
  "meta_caat",
  make_step,
  cost=cost,
  init_extra=init_extra,
  validate=validate,
  epoch_hook=base.EpochHook(fairness.epoch_validation, fairness.epoch_update),
  meta_batch=lambda config: True,
  needs_meta_set=lambda config: True,
  switches=("fairness.enabled",),
)
