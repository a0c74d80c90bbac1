"""The baselines (docs/method.md §8) against hand computations: TRADES' loss
and its gradient through the clean logits, PGD-AT's uniform start keyed per
sample. Slow (``-m slow``): each compiles a step or a gradient through attacks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from caat_jax import attacks
from caat_jax.methods import pgd_at, trades
from tests.helpers import (
  digits_config,
  hand_attack,
  hand_ce,
  hand_forward,
  hand_kl,
  sample_keys,
  tree_dist,
)


def _sgd1(ctx, state):
  """ctx and state with the optimiser optax.sgd(1): the update is -grad."""
  tx = optax.sgd(1.0)
  return (dataclasses.replace(ctx, tx=tx), state.replace(opt_state=tx.init(state.params), extra={}))


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_trades_loss_and_gradient_through_clean_logits(setup):
  """TRADES: CE(f(x), y) + beta KL(f(x) || f(x')), f(x) not detached; x' the
  KL adversary with per-sample keys. The step's update (optimiser sgd(1))
  is minus the gradient of that loss written by hand; detaching f(x) in the
  KL, or swapping the KL's arguments, gives measurably different numbers."""
  ctx, state, batch = setup
  beta = 6.0
  ctx1, st = _sgd1(ctx, state)
  st = st.replace(params=jax.tree.map(lambda p: 3.0 * p, st.params))  # sharper outputs
  x, y = batch["image"], batch["label"]
  key = jax.random.PRNGKey(31)
  step = jax.jit(trades.make_step(digits_config(method="trades", **{"trades.beta": beta}), ctx1))
  new, metrics = step(st, {"image": x, "label": y}, key)
  got_grad = jax.tree.map(lambda a, b: a - b, st.params, new.params)

  bs = st.batch_stats
  x_adv = jax.jit(
    lambda: hand_attack(ctx, ctx.eval_logits_fn(st.params, bs), x, y, key, adversary=True)
  )()

  def by_hand(params, detach=False, swap=False):
    lc, la = hand_forward(ctx, params, bs, x), hand_forward(ctx, params, bs, x_adv)
    target = jax.lax.stop_gradient(lc) if detach else lc
    kl = hand_kl(la, target) if swap else hand_kl(target, la)
    return hand_ce(lc, y).mean() + beta * kl.mean()

  np.testing.assert_allclose(metrics["loss"], by_hand(st.params), rtol=1e-5)
  lc, la = hand_forward(ctx, st.params, bs, x), hand_forward(ctx, st.params, bs, x_adv)
  np.testing.assert_allclose(metrics["kl"], hand_kl(lc, la).mean(), rtol=1e-5)
  assert abs(float(hand_kl(la, lc).mean()) - float(metrics["kl"])) > 1e-3 * float(metrics["kl"])
  grads = jax.jit(
    lambda p: [
      jax.grad(by_hand)(p),
      jax.grad(lambda q: by_hand(q, detach=True))(p),
      jax.grad(lambda q: by_hand(q, swap=True))(p),
    ]
  )
  want, detached, swapped = grads(st.params)
  scale = tree_dist(want, jax.tree.map(jnp.zeros_like, want))
  assert tree_dist(got_grad, want) < 1e-4 * scale
  assert tree_dist(got_grad, detached) > 1e-2 * scale
  assert tree_dist(got_grad, swapped) > 1e-3 * scale  # KL is symmetric to second order


@pytest.mark.slow  # compiles a step or a gradient through two attacks: ~20 s on 2 cores
def test_pgd_at_start_is_uniform_in_the_ball_keyed_per_sample(setup):
  """PGD-AT with K = 0 trains on its start point: x + U(-eps, eps) from
  sample i's key fold_in(key, i), clipped to [0, 1]; the step's loss and
  update (sgd(1)) match the hand computation on that point."""
  ctx, state, batch = setup
  ctx1, st = _sgd1(ctx, state)
  ctx0 = dataclasses.replace(ctx1, attack=dataclasses.replace(ctx.attack, num_steps=0))
  x, y = batch["image"], batch["label"]
  key, eps = jax.random.PRNGKey(41), ctx.attack.eps
  new, metrics = jax.jit(pgd_at.make_step(None, ctx0))(st, {"image": x, "label": y}, key)

  noise = np.stack(
    [
      np.asarray(
        jax.random.uniform(jax.random.fold_in(key, i), x.shape[1:], jnp.float32, -1.0, 1.0)
      )
      for i in range(x.shape[0])
    ]
  )
  start = np.clip(np.asarray(x) + eps * noise, 0.0, 1.0)
  # the start point fills the ball (uniform, not 0.001 N), differently per sample
  inner = (np.asarray(x) > eps) & (np.asarray(x) < 1 - eps)
  assert np.abs(start - x)[inner].max() > 0.99 * eps
  assert np.abs(start - x).max() <= eps + 1e-6
  assert not np.allclose(noise[0], noise[1])
  by_hand = lambda p: hand_ce(hand_forward(ctx, p, st.batch_stats, jnp.asarray(start)), y).mean()
  np.testing.assert_allclose(metrics["loss"], by_hand(st.params), rtol=1e-5)
  got_grad = jax.tree.map(lambda a, b: a - b, st.params, new.params)
  want = jax.grad(by_hand)(st.params)
  assert tree_dist(got_grad, want) < 1e-4 * tree_dist(want, jax.tree.map(jnp.zeros_like, want))
  # the attack itself with K = 0 returns that start point
  f = ctx.eval_logits_fn(st.params, st.batch_stats)
  b = x.shape[0]
  x0 = attacks.pgd(
    f,
    x,
    y,
    eps=jnp.full((b,), eps),
    step_size=jnp.full((b,), 0.01),
    num_steps=0,
    keys=sample_keys(key, b),
    start="uniform",
  )
  np.testing.assert_allclose(x0, start, atol=1e-6)
