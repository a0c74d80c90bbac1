"""PGD-AT (Madry et al. 2018): CE on PGD-K CE adversaries from a uniform start."""

import jax

from caat_jax import losses
from caat_jax.methods import base


def make_step(config, ctx: base.StepContext):
  del config

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    x_adv = ctx.pgd(
      attack_fn,
      x,
      y,
      ctx.sample_keys(key, x.shape[0]),
      eps=ctx.full_eps(x.shape[0]),
      start="uniform",
    )

    def loss_fn(params):
      logits, bs = ctx.train_logits(params, state.batch_stats, x_adv)
      return losses.cross_entropy(logits, y).mean(), (logits, bs)

    (loss, (logits, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "adv_acc": losses.correct(logits, y).mean()}
    return base.apply_gradients(state, grads, bs, ctx), base.pmean(metrics, ctx.axis_name)

  return step


METHOD = base.Method("pgd_at", make_step, cost=lambda config: base.attack_units(config) + 3.0)
