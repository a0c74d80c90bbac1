"""FRL (Xu et al., ICML 2021; SPEC 7): TRADES with fairness constraints.

``fairness.mode``: ``reweight`` (class weights from lambda0 on the natural
CE and lambda1 on the boundary KL), ``remargin`` (class-wise eps from
lambda2), ``reweight_remargin`` (both), ``baseline_reweight`` (upweight the
class with the largest validation robust error). The multipliers are updated
once per epoch on the validation set (``fairness_epoch_end``); Meta-CAAT
reuses that hook when ``fairness.enabled``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, bounds, evaluate, fairness, losses
from caat_jax.methods import base


def init_extra(ctx: base.StepContext, key) -> dict:
  del key
  return {"fair": fairness.init(ctx.num_classes)}


def uses_margin(cfg) -> bool:
  return cfg.fairness.mode in ("remargin", "reweight_remargin")


def loss_factors(cfg, lam, y, axis):
  """Per-sample factors (natural term, boundary term) of the class weights."""
  mode = cfg.fairness.mode
  if mode in ("reweight", "reweight_remargin"):
    return (fairness.sample_factors(fairness.class_weights(lam["lambda0"]), y, axis),
            fairness.sample_factors(fairness.class_weights(lam["lambda1"]), y, axis))
  if mode == "baseline_reweight":
    f = fairness.sample_factors(lam["baseline_w"], y, axis)
    return f, f
  ones = jnp.ones(y.shape, jnp.float32)
  return ones, ones


def step(state, batch, key, ctx: base.StepContext):
  cfg, axis = ctx.config, ctx.axis_name
  x, y = batch["image"], batch["label"]
  b = x.shape[0]
  lam = state.extra["fair"]
  eps = (bounds.remargin(cfg.attack.eps, y, lam["lambda2"]) if uses_margin(cfg)
         else bounds.fixed(cfg.attack.eps, b))
  clean = ctx.eval_logits_fn(state.params, state.batch_stats)(x)
  x_adv = ctx.attack(state, x, y, key, eps=eps, start="gaussian",
                     loss_kind=jnp.full((b,), attacks.LOSS_KL), clean_logits=clean)
  f0, f1 = loss_factors(cfg, lam, y, axis)

  def loss_fn(params):
    logits, bs = ctx.train_logits(params, state.batch_stats, x)
    logits_adv, bs = ctx.train_logits(params, bs, x_adv)
    ce = (f0 * losses.cross_entropy(logits, y)).mean()
    kl = (f1 * losses.kl_divergence(logits, logits_adv)).mean()
    return ce + cfg.trades.beta * kl, (logits, logits_adv, bs)

  (loss, (logits, logits_adv, bs)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = base.pmean({"loss": loss, "clean_acc": losses.correct(logits, y).mean(),
                        "adv_acc": losses.correct(logits_adv, y).mean(),
                        "eps": eps.mean()}, axis)
  metrics.update(base.ratio_metric("eps_per_class", eps, y, ctx.num_classes, axis))
  return base.apply_gradients(state, grads, bs, ctx), metrics


def fairness_epoch_end(run, rstate, epoch: int):
  """FRL's Lagrangian update on the validation (meta) set, once per epoch.

  PGD-``fairness.attack_steps`` (CE, uniform start, eps ``attack.eps``, step
  ``fairness.step_size``) per-class natural and boundary errors -> multipliers.
  A no-op for methods whose ``fairness.enabled`` is off (FRL forces it on).
  """
  cfg = run.config
  if not (cfg.fairness.enabled or cfg.method == "frl"):
    return rstate, {}
  if len(run.dataset.meta) == 0:
    raise ValueError("fairness needs a validation set: set config.data.meta_per_class > 0")
  f = cfg.fairness
  attack = f"pgd{f.attack_steps}"
  eval_step = run.eval_step_for((attack,), cfg.attack.eps, f.step_size)
  out = evaluate.run_eval(run.parallel, eval_step, rstate.variables, run.dataset.meta,
                          batch_size=cfg.eval.batch_size)
  c = run.dataset.num_classes
  nat = evaluate.per_class_error(out["natural"], out["label"], c) / 100.0
  rob = evaluate.per_class_error(out[attack], out["label"], c) / 100.0
  lams = run.parallel.fetch(rstate.extra["fair"])
  new = fairness.update(lams, nat, rob - nat, epoch=epoch, r1=f.r1, r2=f.r2, tau1=f.tau1,
                        tau2=f.tau2, lim=f.lim, halve_every=f.halve_every)
  if f.mode == "baseline_reweight":
    new["baseline_w"] = fairness.baseline_reweight(rob, f.baseline_factor)
  rstate = rstate.replace(extra=dict(rstate.extra, fair=run.parallel.replicate(new)))
  record = {f"fair/{k}": np.round(v, 6).tolist() for k, v in new.items()}
  record.update({"fair/val_natural_err": np.round(nat, 6).tolist(),
                 "fair/val_boundary_err": np.round(rob - nat, 6).tolist()})
  return rstate, record


METHOD = base.Method("frl", step, init_extra, on_epoch_end=fairness_epoch_end)
