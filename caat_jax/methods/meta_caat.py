"""Meta-CAAT (paper Algorithm 1, Eqs. 25-29; SPEC section 5).

One step, per device:
  1. clean logits (inference mode) -> the six characteristics zeta, running
     standardisation -> [alpha_i, beta_i] = softmax(f_Omega(zeta_i) / tau);
  2. bounds eps_i (fixed / remargin / grad);
  3. adversaries (ascend KL) and anti-adversaries (descend CE) in ONE attack
     call over the stacked batch [x; x] with per-sample sign and loss;
  4. every ``meta.interval`` steps: meta-gradient of the meta loss through a
     one-step look-ahead W_hat(Omega) (``meta.variant``), Adam step on Omega;
  5. [alpha, beta] recomputed with the new Omega (no gradient), real
     optimiser step on W with the same batch and perturbations.

Per-sample training loss (Eq. 27):
  l_i = alpha_i (f0_i CE(f(x_i), y_i) + lam f1_i KL(f(x_i) || f(x_adv_i)))
        + beta_i f0_i CE(f(x_at_i), y_i)
with FRL's class-weight factors f0, f1 when ``fairness.enabled`` (else 1).
"""

import jax
import jax.numpy as jnp
import optax

from caat_jax import attacks, bounds, characteristics, fairness, losses, meta, strategy
from caat_jax.methods import base, frl

DIRECTIONS = ("combined", "adversarial_only", "rule")
OBJECTIVES = ("robust", "clean_ce", "official")
LOOKAHEADS = ("sgd", "sgd_momentum_wd")


def weighting_net(cfg) -> strategy.WeightingNet:
  return strategy.WeightingNet(hidden=cfg.caat.hidden, tau=cfg.caat.tau)


def meta_optimizer(cfg) -> optax.GradientTransformation:
  return optax.adam(cfg.meta.learning_rate)


def init_extra(ctx: base.StepContext, key) -> dict:
  cfg = ctx.config
  omega = weighting_net(cfg).init(key, jnp.zeros((1, characteristics.NUM_FEATURES)))["params"]
  return {"wnet": omega, "wnet_opt": meta_optimizer(cfg).init(omega),
          "stats": characteristics.init_running_stats(ctx.num_classes),
          "fair": fairness.init(ctx.num_classes)}


def _rule_weights(class_counts, labels):
  """Table 9's "Without": head classes (count at or above the median)
  anti-adversarial, tail classes adversarial."""
  counts = jnp.asarray(class_counts, jnp.float32)
  head = counts[labels] >= jnp.median(counts)
  beta = head.astype(jnp.float32)
  return jnp.stack([1.0 - beta, beta], axis=-1)


def _lookahead(cfg, state, lr):
  if cfg.meta.lookahead == "sgd":
    return meta.sgd_lookahead(lr)
  trace = optax.tree_utils.tree_get(state.opt_state, "trace")
  if trace is None:
    trace = jax.tree.map(jnp.zeros_like, state.params)
  o = cfg.optimizer
  return meta.sgd_momentum_wd_lookahead(lr, o.momentum, o.weight_decay, trace)


def step(state, batch, key, ctx: base.StepContext):
  cfg, axis, num_classes = ctx.config, ctx.axis_name, ctx.num_classes
  c = cfg.caat
  x, y = batch["image"], batch["label"]
  b = x.shape[0]
  k_adv, k_at, k_meta_adv, k_meta_at = jax.random.split(key, 4)
  extra = state.extra
  attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)

  # 1. characteristics and weights.
  clean = attack_fn(x)
  z, stats = characteristics.strategy_inputs(clean, y, ctx.class_counts, extra["stats"], c, axis)
  wnet = weighting_net(cfg)
  weights_fn = lambda om: wnet.apply({"params": om}, z)
  if c.direction == "combined":
    w_old = weights_fn(extra["wnet"])
  elif c.direction == "adversarial_only":
    w_old = jnp.tile(jnp.array([[1.0, 0.0]]), (b, 1))
  else:
    w_old = _rule_weights(ctx.class_counts, y)

  # 2. bounds.
  lam = extra["fair"]
  if c.bound == "fixed" or c.direction == "rule":
    eps = bounds.fixed(cfg.attack.eps, b)
  elif c.bound == "remargin":
    eps = bounds.remargin(cfg.attack.eps, y, lam["lambda2"])
  else:
    eps = bounds.grad_based(attack_fn, x, y, clean, w_old[:, 0], w_old[:, 1],
                            eps=cfg.attack.eps, keys=base.sample_keys(k_adv, b, axis),
                            offset=c.grad_bound_offset, axis_name=axis)

  # 3. adversaries and anti-adversaries: one attack over [x; x].
  x_adv, x_at = _adv_and_anti(ctx, attack_fn, x, y, clean, eps, k_adv, k_at)

  # FRL class weights (ones when fairness is off).
  if cfg.fairness.enabled and cfg.fairness.mode in ("reweight", "reweight_remargin"):
    f0 = fairness.sample_factors(fairness.class_weights(lam["lambda0"]), y, axis)
    f1 = fairness.sample_factors(fairness.class_weights(lam["lambda1"]), y, axis)
  else:
    f0 = f1 = jnp.ones((b,), jnp.float32)

  def per_sample_fn(params):
    lc, bs = ctx.train_logits(params, state.batch_stats, x)
    la, bs = ctx.train_logits(params, bs, x_adv)
    lt, bs = ctx.train_logits(params, bs, x_at)
    ce, kl, ce_at = losses.cross_entropy(lc, y), losses.kl_divergence(lc, la), \
        losses.cross_entropy(lt, y)
    terms = jnp.stack([f0 * ce + c.lam * f1 * kl, f0 * ce_at], axis=-1)
    return terms, (bs, ce, lc, la, lt)

  lr = ctx.schedule(state.step)

  # 4. meta step on Omega.
  def do_meta(omega, opt):
    problem = meta.MetaProblem(
        weights_fn=weights_fn, per_sample_fn=per_sample_fn,
        lookahead_fn=_lookahead(cfg, state, lr),
        meta_loss_fn=_meta_loss_fn(ctx, state, attack_fn, batch, k_meta_adv, k_meta_at),
        lr=lr, axis_name=axis)
    options = {"k": cfg.meta.k} if cfg.meta.variant == "k_step" else {}
    grad, info = meta.get(cfg.meta.variant)(problem, omega, state.params, **options)
    updates, opt = meta_optimizer(cfg).update(grad, opt, omega)
    return optax.apply_updates(omega, updates), opt, info["meta_loss"], optax.tree.norm(grad)

  def skip_meta(omega, opt):
    return omega, opt, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

  if c.direction != "combined":
    meta_now = jnp.asarray(False)
    omega, wnet_opt, meta_loss, meta_grad_norm = skip_meta(extra["wnet"], extra["wnet_opt"])
  elif cfg.meta.interval == 1:  # no cond: XLA optimises a branch-free step better
    meta_now = jnp.asarray(True)
    omega, wnet_opt, meta_loss, meta_grad_norm = do_meta(extra["wnet"], extra["wnet_opt"])
  else:
    meta_now = state.step % cfg.meta.interval == 0
    omega, wnet_opt, meta_loss, meta_grad_norm = jax.lax.cond(
        meta_now, do_meta, skip_meta, extra["wnet"], extra["wnet_opt"])

  # 5. the real update with the new weights.
  w_new = jax.lax.stop_gradient(weights_fn(omega)) if c.direction == "combined" else w_old
  problem = meta.MetaProblem(weights_fn, per_sample_fn, None, None, lr, axis)
  (loss, (bs, ce, lc, la, lt)), grads = jax.value_and_grad(
      problem.weighted_loss, has_aux=True)(state.params, w_new)
  stats = characteristics.update_class_loss(stats, jax.lax.stop_gradient(ce), y, num_classes,
                                            c.class_loss_momentum, axis)
  new_extra = dict(extra, wnet=omega, wnet_opt=wnet_opt, stats=stats)
  new_state = base.apply_gradients(state, grads, bs, ctx, extra=new_extra)

  did = meta_now.astype(jnp.float32)
  metrics = base.pmean({
      "loss": loss, "alpha": w_new[:, 0].mean(),
      "clean_acc": losses.correct(lc, y).mean(),
      "adv_acc": losses.correct(la, y).mean(),
      "anti_acc": losses.correct(lt, y).mean(),
      "eps": eps.mean()}, axis)
  # averaged over the steps that took a meta step only
  metrics["ratio/meta_loss/num"] = (meta_loss * did)[None]
  metrics["ratio/meta_loss/den"] = did[None]
  metrics["meta_grad_norm"] = meta_grad_norm
  metrics.update(strategy_stats(w_new[:, 0], eps, y, batch, num_classes, axis))
  return new_state, metrics


def strategy_stats(alpha, eps, y, batch, num_classes, axis) -> dict:
  """Adversary ratio (mean alpha) and mean bound per class, and split by
  clean (0) / corrupted (1) training labels: the paper's Figs. 9, 10, 13."""
  corrupted = batch.get("corrupted", jnp.zeros_like(y, bool)).astype(jnp.int32)
  out = {}
  out.update(base.ratio_metric("adv_ratio_per_class", alpha, y, num_classes, axis))
  out.update(base.ratio_metric("eps_per_class", eps, y, num_classes, axis))
  out.update(base.ratio_metric("adv_ratio_clean_noisy", alpha, corrupted, 2, axis))
  out.update(base.ratio_metric("eps_clean_noisy", eps, corrupted, 2, axis))
  return out


def _adv_and_anti(ctx, attack_fn, x, y, clean, eps, k_adv, k_at):
  """Adversaries (KL ascent) and anti-adversaries (CE descent) of the same
  inputs, in one PGD call over the stacked batch."""
  b, axis = x.shape[0], ctx.axis_name
  both = lambda a, b_: jnp.concatenate([a, b_], axis=0)
  ones = jnp.ones((b,), jnp.float32)
  eps2 = both(eps, eps)
  out = attacks.pgd(
      attack_fn, both(x, x), both(y, y), eps=eps2, step_size=ctx.step_sizes(eps2),
      num_steps=ctx.config.attack.num_steps,
      keys=both(base.sample_keys(k_adv, b, axis), base.sample_keys(k_at, b, axis)),
      sign=both(ones, -ones),
      loss_kind=both(jnp.full((b,), attacks.LOSS_KL), jnp.full((b,), attacks.LOSS_CE)),
      clean_logits=both(clean, clean), start="gaussian", unroll=ctx.unroll)
  return out[:b], out[b:]


def _meta_loss_fn(ctx, state, attack_fn, batch, k_adv, k_at):
  """The meta objective on the meta batch, as a function of the classifier
  parameters (evaluated at W_hat). Meta adversaries are generated at the
  current W (a constant for the meta-gradient)."""
  cfg = ctx.config
  xm, ym = batch["meta_image"], batch["meta_label"]
  objective = cfg.meta.objective
  if objective == "clean_ce":
    def fn(params):
      lm, _ = ctx.train_logits(params, state.batch_stats, xm)
      return losses.cross_entropy(lm, ym).mean()
    return fn
  clean_m = attack_fn(xm)
  eps = bounds.fixed(cfg.attack.eps, xm.shape[0])
  if objective == "official":
    xm_adv, xm_at = _adv_and_anti(ctx, attack_fn, xm, ym, clean_m, eps, k_adv, k_at)
  else:
    xm_adv = ctx.attack(state, xm, ym, k_adv, eps=eps, start="gaussian",
                        loss_kind=jnp.full((xm.shape[0],), attacks.LOSS_KL),
                        clean_logits=clean_m)

  def fn(params):
    lm, bs = ctx.train_logits(params, state.batch_stats, xm)
    la, bs = ctx.train_logits(params, bs, xm_adv)
    value = (losses.cross_entropy(lm, ym) + cfg.caat.lam * losses.kl_divergence(lm, la)).mean()
    if objective == "official":
      lt, _ = ctx.train_logits(params, bs, xm_at)
      value = value + losses.cross_entropy(lt, ym).mean()
    return value
  return fn


METHOD = base.Method("meta_caat", step, init_extra, on_epoch_end=frl.fairness_epoch_end,
                     meta_batch=True)
