"""FRL (Xu et al., ICML 2021; docs/method.md §7): TRADES with fairness constraints.

``fairness.mode``: ``reweight`` (class weights from lambda0 on the natural
CE and lambda1 on the boundary KL), ``remargin`` (class-wise eps from
lambda2), ``reweight_remargin`` (both), ``baseline_reweight`` (upweight the
class with the largest validation robust error). The multipliers are updated
once per epoch from the validation set's per-class errors
(``caat.fairness.epoch_validation`` / ``epoch_update``, shared with
Meta-CAAT); FRL always has it on.
"""

import functools

import jax

from caat_jax import losses
from caat_jax.caat import bounds, fairness
from caat_jax.methods import base, perturb, trades


def init_extra(config, ctx: base.StepContext, key) -> dict:
  del config, key
  return {"fair": fairness.init(ctx.num_classes)}


def make_step(config, ctx: base.StepContext):
  mode, beta, axis = config.fairness.mode, float(config.trades.beta), ctx.axis_name
  bound = bounds.bound_fn("remargin" if mode in fairness.MARGIN_MODES else "fixed", ctx)
  factors = fairness.factors_fn(mode)

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    multipliers = state.extra["fair"]
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    clean = attack_fn(x)
    eps = bound(attack_fn, x, y, clean, fair=multipliers)
    x_adv = perturb.adversaries(ctx, attack_fn, x, y, clean, eps, key)
    natural_factor, boundary_factor = factors(multipliers, y, axis)

    def loss_fn(params):
      logits, bs = ctx.train_logits(params, state.batch_stats, x)
      logits_adv, bs = ctx.train_logits(params, bs, x_adv)
      ce = (natural_factor * losses.cross_entropy(logits, y)).mean()
      kl = (boundary_factor * losses.kl_divergence(logits, logits_adv)).mean()
      return ce + beta * kl, (logits, logits_adv, bs)

    (loss, (logits, logits_adv, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    metrics = base.pmean(
      {
        "loss": loss,
        "clean_acc": losses.correct(logits, y).mean(),
        "adv_acc": losses.correct(logits_adv, y).mean(),
        "eps": eps.mean(),
      },
      axis,
    )
    metrics.update(base.ratio_metric("eps_per_class", eps, y, ctx.num_classes, axis))
    return base.apply_gradients(state, grads, bs, ctx), metrics

  return step


def validate(config) -> None:
  trades.validate(config)
  fairness.validate_fairness(config)


METHOD = base.Method(
  "frl",
  make_step,
  cost=trades.cost,
  init_extra=init_extra,
  validate=validate,
  epoch_hook=base.EpochHook(
    functools.partial(fairness.epoch_validation, always=True), fairness.epoch_update
  ),
  needs_meta_set=lambda config: True,
)
