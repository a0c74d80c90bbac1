"""The [0, 1] box for every attack, FAB's box-corner fallback, and Square's
pieces (stripes, window sizes, one colour per channel, accept rule) against
direct computations."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax import attacks
from caat_jax.attacks import apgd, fab, square
from tests.test_autoattack import keys_for

N, HW, C = 16, 6, 3


def _model(seed=0, classes=4):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(HW * HW * C, classes)), jnp.float32)
  return lambda v: jnp.tanh(v.reshape(v.shape[0], -1)) @ w


def _near_faces(seed=1):
  """Images whose pixels sit at or within 0.01 of 0 and 1."""
  rng = np.random.default_rng(seed)
  x = rng.choice([0.0, 0.005, 0.995, 1.0], (N, HW, HW, C)).astype(np.float32)
  return jnp.asarray(x)


def _assert_in_ball_and_box(x_adv, x, eps):
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  assert np.all(x_adv >= 0.0) and np.all(x_adv <= 1.0)
  assert np.max(np.abs(x_adv - x)) <= eps + 1e-6
  return x_adv


@pytest.mark.parametrize("attack", ["pgd", "apgd", "fab", "square"])
def test_every_attack_stays_in_the_box_near_its_faces(attack):
  f = _model()
  x = _near_faces()
  y = jnp.argmax(f(x), -1)
  eps, keys = 0.1, keys_for(N)
  if attack == "pgd":
    out = attacks.pgd(f, x, y, eps=jnp.full((N,), eps), step_size=jnp.full((N,), 0.05),
                      num_steps=5, keys=keys)
  elif attack == "apgd":
    out = apgd.apgd_run(f, x, y, eps=eps, keys=keys, num_iters=10)[0].x_adv
  elif attack == "fab":  # eps = 0.1 judges, but FAB searches unbounded: check the box only
    out, _ = fab.fab_run(f, x, y, (y + 1) % 4, num_iters=10)
    out = np.asarray(out)
    assert np.all(out >= 0.0) and np.all(out <= 1.0)
    return
  else:
    out = square.square(f, x, y, eps=eps, keys=keys, num_queries=20).x_adv
    # The stripes' start too: pixels at a face cannot move outwards.
    start = np.asarray(square.initial_stripes(x, jnp.full((N,), eps), keys))
    _assert_in_ball_and_box(start, x, eps)
    assert np.all(start[np.asarray(x) == 0.0] >= 0.0)
  out = _assert_in_ball_and_box(out, x, eps)
  if attack in ("pgd", "apgd"):  # sign steps push pixels at the faces onto them
    assert np.any(out == 0.0) and np.any(out == 1.0)


def test_fab_projection_falls_back_to_the_box_corner():
  """A hyperplane the box cannot reach: the step goes to the corner that
  comes closest (each coordinate as far as the box allows towards it)."""
  rng = np.random.default_rng(0)
  t = rng.uniform(0.0, 1.0, (4, 10))
  w = rng.normal(size=(4, 10))
  w[:, 0] = 0.0  # a coordinate that does not matter stays put
  b = np.where(np.arange(4) % 2 == 0, 100.0, -100.0) * np.abs(w).sum(-1)  # far above / below
  step = np.asarray(fab.project_linf(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  z = t + step
  up = (b > 0)[:, None] == (w > 0)  # raise w.x: increase where w > 0
  corner = np.where(up, 1.0, 0.0)
  np.testing.assert_allclose(z[:, 1:], corner[:, 1:], atol=1e-6)
  np.testing.assert_array_equal(step[:, 0], 0.0)


def test_square_starts_from_vertical_stripes():
  x = jnp.full((N, HW, HW, C), 0.5)
  eps = jnp.linspace(0.05, 0.2, N)
  start = np.asarray(square.initial_stripes(x, eps, keys_for(N)))
  d = start - 0.5
  np.testing.assert_allclose(np.abs(d), np.broadcast_to(np.asarray(eps)[:, None, None, None],
                                                        d.shape), rtol=1e-6)
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
  assert int(square.window_size(jnp.int32(100), (32, 32), num_queries=1000, rescale=True)) == \
      int(square.window_size(jnp.int32(1000), (32, 32)))


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
    assert changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and changed.sum() == size ** 2
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
