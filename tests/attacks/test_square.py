"""Square: the p schedule, accuracy lowered without gradients, and its pieces
(stripes, window sizes, one colour per channel, accept rule) against direct
computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax.attacks import square
from tests.helpers import eps_and_subset, keys_for, linear_problem


def _no_gradient(logits_fn):
  """``logits_fn`` that fails if anything differentiates it."""

  @jax.custom_vjp
  def g(v):
    return logits_fn(v)

  def fwd(v):
    return g(v), None

  def bwd(_, __):
    raise AssertionError("Square Attack must not use gradients")

  g.defvjp(fwd, bwd)
  return g


def test_p_schedule_matches_the_reference():
  got = [
    square.p_schedule(i)
    for i in (
      0,
      10,
      11,
      50,
      51,
      200,
      201,
      500,
      501,
      1000,
      1001,
      2000,
      2001,
      4000,
      4001,
      6000,
      6001,
      8000,
      8001,
    )
  ]
  want = [
    0.8,
    0.8,
    0.4,
    0.4,
    0.2,
    0.2,
    0.1,
    0.1,
    0.05,
    0.05,
    0.025,
    0.025,
    0.0125,
    0.0125,
    0.00625,
    0.00625,
    0.003125,
    0.003125,
    0.0015625,
  ]
  np.testing.assert_allclose(got, want)
  assert square.window_sizes((32, 32))[:3] == [29, 20, 14]


def test_square_lowers_accuracy_without_gradients():
  f, x, y, dist = linear_problem(2, seed=5)
  # Most points breakable: random search needs no exact vertex for them.
  eps, x, y, dist = eps_and_subset(dist, x, y, quantile=0.9)
  res = jax.jit(
    lambda x, y, k: square.square(_no_gradient(f), x, y, eps=eps, keys=k, num_queries=1500)
  )(x, y, keys_for(len(y)))
  robust = np.asarray(res.robust)
  assert robust.mean() < 0.75, robust.mean()  # clean accuracy is 1
  assert np.all(robust[dist > eps])  # never below the true robust accuracy
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)
  broken = ~robust
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])


N, HW, C = 16, 6, 3


def test_square_starts_from_vertical_stripes():
  x = jnp.full((N, HW, HW, C), 0.5)
  eps = jnp.linspace(0.05, 0.2, N)
  start = np.asarray(square.initial_stripes(x, eps, keys_for(N)))
  d = start - 0.5
  np.testing.assert_allclose(
    np.abs(d), np.broadcast_to(np.asarray(eps)[:, None, None, None], d.shape), rtol=1e-6
  )
  np.testing.assert_array_equal(d, np.broadcast_to(d[:, :1], d.shape))  # constant down columns
  signs = np.sign(d[:, 0])  # [N, W, C]: one sign per (column, channel), both signs used
  assert (signs > 0).any() and (signs < 0).any()
  assert len({tuple(s.ravel()) for s in signs}) > 1  # per point, from its own key


def test_square_window_sizes_follow_the_schedule():
  for hw in ((6, 6), (8, 8), (32, 32)):
    for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 4001, 6001, 8001, 9999):
      p = square.p_schedule(i)
      want = min(max(int(round(math.sqrt(p * hw[0] * hw[1]))), 1), hw[0])
      assert int(square.window_size(jnp.int32(i), hw)) == want, (hw, i)
  # Rescaled to 1000 queries, query 100 is the unrescaled query 1000.
  assert int(square.window_size(jnp.int32(100), (32, 32), num_queries=1000, rescale=True)) == int(
    square.window_size(jnp.int32(1000), (32, 32))
  )


@pytest.mark.parametrize("i", [0, 30, 600])
def test_square_proposal_is_one_window_one_colour_per_channel(i):
  x = jnp.full((N, HW, HW, C), 0.5)
  eps = jnp.full((N,), 0.1)
  size = int(square.window_size(jnp.int32(i), (HW, HW)))
  new = np.asarray(square.proposal(x, x, eps, keys_for(N), jnp.int32(i), size))
  d = new - 0.5
  for b in range(N):
    changed = np.any(d[b] != 0, axis=-1)  # [H, W]
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    assert len(rows) == len(cols) == size  # a size x size square ...
    assert (
      changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all() and changed.sum() == size**2
    )
    assert rows[0] <= HW - size and cols[0] <= HW - size  # corner in [0, h - size]
    inside = d[b][changed]  # [size^2, C]: 2 eps clipped to the ball = eps, same per channel
    np.testing.assert_allclose(np.abs(inside), 0.1, rtol=1e-5)
    np.testing.assert_array_equal(inside, np.broadcast_to(inside[:1], inside.shape))


def test_square_accept_rule():
  m_new = jnp.array([0.5, 0.2, -0.1, 0.3, -0.2, 0.1])
  m_min = jnp.array([0.4, 0.4, 0.4, 0.4, -0.5, 0.4])
  loss_min = jnp.array([0.4, 0.4, 0.4, 0.2, -0.5, 0.4])
  attacked = jnp.array([True, True, True, True, False, False])
  improved, m, lm = square.accept(m_new, m_min, loss_min, attacked)
  # worse; better; misclassified; above loss_min; not attacked (broken); not attacked.
  np.testing.assert_array_equal(improved, [False, True, True, False, False, False])
  np.testing.assert_allclose(m, [0.4, 0.2, -0.1, 0.4, -0.5, 0.4])
  np.testing.assert_allclose(lm, [0.4, 0.2, -0.1, 0.2, -0.5, 0.4])
