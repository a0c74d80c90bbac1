"""PGD-AT (Madry et al. 2018): CE on PGD-K CE adversaries from a uniform start."""

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.methods import base


def step(state, batch, key, ctx: base.StepContext):
  x, y = batch["image"], batch["label"]
  eps = jnp.full((x.shape[0],), ctx.config.attack.eps, jnp.float32)
  x_adv = ctx.attack(state, x, y, key, eps=eps, start="uniform")

  def loss_fn(params):
    logits, bs = ctx.train_logits(params, state.batch_stats, x_adv)
    return losses.cross_entropy(logits, y).mean(), (logits, bs)

  (loss, (logits, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "adv_acc": losses.correct(logits, y).mean()}
  return base.apply_gradients(state, grads, bs, ctx), base.pmean(metrics, ctx.axis_name)


METHOD = base.Method("pgd_at", step)
