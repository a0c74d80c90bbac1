"""Natural (standard) training: mean CE on clean inputs."""

import jax

from caat_jax import losses
from caat_jax.methods import base


def make_step(config, ctx: base.StepContext):
  del config

  def step(state, batch, key):
    del key  # deterministic given the (augmented) batch
    x, y = batch["image"], batch["label"]

    def loss_fn(params):
      logits, bs = ctx.train_logits(params, state.batch_stats, x)
      return losses.cross_entropy(logits, y).mean(), (logits, bs)

    (loss, (logits, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "clean_acc": losses.correct(logits, y).mean()}
    return base.apply_gradients(state, grads, bs, ctx), base.pmean(metrics, ctx.axis_name)

  return step


METHOD = base.Method("natural", make_step, cost=lambda config: 3.0)
