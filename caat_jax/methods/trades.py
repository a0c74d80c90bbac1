"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')).

x' ascends KL(f(x) || f(x')) from x + 0.001 N(0, I) with f in inference mode
(docs/method.md §2); in the loss f(x) is not detached, as in the reference code. The clean
and perturbed batches go through the network in two training-mode passes, each
with its own batch statistics, as the reference's two forward calls do.
"""

import jax

from caat_jax import losses
from caat_jax.checks import check
from caat_jax.methods import base, perturb


def make_step(config, ctx: base.StepContext):
  beta = float(config.trades.beta)

  def step(state, batch, key):
    x, y = batch["image"], batch["label"]
    attack_fn = ctx.eval_logits_fn(state.params, state.batch_stats)
    x_adv = perturb.adversaries(ctx, attack_fn, x, y, attack_fn(x), ctx.full_eps(x.shape[0]), key)

    def loss_fn(params):
      logits, bs = ctx.train_logits(params, state.batch_stats, x)
      logits_adv, bs = ctx.train_logits(params, bs, x_adv)
      ce = losses.cross_entropy(logits, y).mean()
      kl = losses.kl_divergence(logits, logits_adv).mean()
      return ce + beta * kl, (logits, logits_adv, bs, kl)

    (loss, (logits, logits_adv, bs, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    metrics = {
      "loss": loss,
      "kl": kl,
      "clean_acc": losses.correct(logits, y).mean(),
      "adv_acc": losses.correct(logits_adv, y).mean(),
    }
    return base.apply_gradients(state, grads, bs, ctx), base.pmean(metrics, ctx.axis_name)

  return step


def cost(config) -> float:
  """One KL attack pass, a clean forward (the KL target), training on clean
  and perturbed inputs (docs/method.md §11: 27F at K = 10)."""
  return base.attack_units(config) + 1.0 + 6.0


def validate(config) -> None:
  check("trades.beta", config.trades.beta >= 0, config.trades.beta, ">= 0")


METHOD = base.Method("trades", make_step, cost=cost, validate=validate)
