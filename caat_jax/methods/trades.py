"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')).

x' ascends KL(f(x) || f(x')) from x + 0.001 N(0, I) with f in inference mode
(SPEC 2); in the loss f(x) is not detached, as in the reference code. The clean
and perturbed batches go through the network in two training-mode passes, each
with its own batch statistics, as the reference's two forward calls do.
"""

import jax
import jax.numpy as jnp

from caat_jax import attacks, losses
from caat_jax.methods import base


def step(state, batch, key, ctx: base.StepContext):
  x, y = batch["image"], batch["label"]
  b = x.shape[0]
  clean_eval = ctx.eval_logits_fn(state.params, state.batch_stats)(x)
  x_adv = ctx.attack(
      state, x, y, key, eps=jnp.full((b,), ctx.config.attack.eps, jnp.float32),
      start="gaussian", loss_kind=jnp.full((b,), attacks.LOSS_KL, jnp.int32),
      clean_logits=clean_eval)

  def loss_fn(params):
    logits, bs = ctx.train_logits(params, state.batch_stats, x)
    logits_adv, bs = ctx.train_logits(params, bs, x_adv)
    ce = losses.cross_entropy(logits, y).mean()
    kl = losses.kl_divergence(logits, logits_adv).mean()
    return ce + ctx.config.trades.beta * kl, (logits, logits_adv, bs, kl)

  (loss, (logits, logits_adv, bs, kl)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "kl": kl,
             "clean_acc": losses.correct(logits, y).mean(),
             "adv_acc": losses.correct(logits_adv, y).mean()}
  return base.apply_gradients(state, grads, bs, ctx), base.pmean(metrics, ctx.axis_name)


METHOD = base.Method("trades", step)
