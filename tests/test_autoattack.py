"""AutoAttack's pieces against closed forms and hand-computed values.

For a linear classifier ``z = W x + b`` (inputs away from the [0, 1] box's
faces) the smallest L-inf perturbation that makes class t score at least
as high as the label y is ``(z_y - z_t) / ||w_y - w_t||_1``, so a point is
robust at eps iff the minimum of that over t exceeds eps.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks import apgd

EPS_MARGIN = 0.05  # points whose distance is within 5% of eps are left out


def linear_problem(num_classes: int, *, n: int = 128, seed: int = 0, disjoint: bool = False):
  """A linear classifier on 8x8x1 inputs in [0.3, 0.7] labelled by itself.

  ``disjoint``: each class's weights live on their own pixels, so one
  perturbation (down on y's pixels, up on everyone else's) is optimal
  against every class at once.
  Returns (logits_fn, x [n, 8, 8, 1], y [n], dist [n] the exact minimal
  L-inf perturbation).
  """
  rng = np.random.default_rng(seed)
  d = 64
  w = rng.normal(size=(d, num_classes))
  if disjoint:
    block = d // num_classes
    mask = np.zeros((d, num_classes))
    for c in range(num_classes):
      mask[c * block:(c + 1) * block, c] = 1.0
    w = w * mask
  b = 0.5 * rng.normal(size=num_classes)
  x = rng.uniform(0.3, 0.7, size=(n, d))
  z = x @ w + b
  y = np.argmax(z, -1)
  gaps = (z[np.arange(n), y][:, None] - z) / np.maximum(_l1_diffs(w, y), 1e-12)
  gaps[np.arange(n), y] = np.inf
  dist = gaps.min(-1)
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w32 + b32
  return logits_fn, jnp.asarray(x.reshape(n, 8, 8, 1), jnp.float32), jnp.asarray(y), dist


def _l1_diffs(w, y):
  """||w_y - w_t||_1 for every point and class; [n, C]."""
  return np.abs(w[:, y][:, :, None] - w[:, None, :]).sum(0)


def eps_and_subset(dist, x, y, quantile=0.5):
  """An eps at a quantile of the distances; drops the points too close to it."""
  eps = float(np.quantile(dist, quantile))
  keep = np.abs(dist - eps) > EPS_MARGIN * eps
  return eps, x[keep], y[keep], dist[keep]


def keys_for(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# --- losses ------------------------------------------------------------------


def test_dlr_against_hand_computed_values():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.5], [1.0, 3.0, 2.0, 0.5]])
  # sorted: 3, 2, 1, 0.5. Label 1 is the argmax: -(3 - 2) / (3 - 1) = -0.5.
  # Label 0 is not: -(1 - 3) / (3 - 1) = 1.
  np.testing.assert_allclose(losses.dlr(logits, jnp.array([1, 0])), [-0.5, 1.0], rtol=1e-6)
  # Targeted, y = 1, t = 2: -(3 - 2) / (3 - (1 + 0.5) / 2) = -1 / 2.25;
  # y = 0, t = 3: -(1 - 0.5) / 2.25.
  got = losses.targeted_dlr(logits, jnp.array([1, 0]), jnp.array([2, 3]))
  np.testing.assert_allclose(got, [-1.0 / 2.25, -0.5 / 2.25], rtol=1e-6)


def test_dlr_is_shift_and_scale_invariant():
  z = jax.random.normal(jax.random.PRNGKey(0), (5, 10))
  y, t = jnp.arange(5), jnp.arange(5) + 3
  np.testing.assert_allclose(losses.dlr(3.0 * z + 7.0, y), losses.dlr(z, y), rtol=1e-5)
  np.testing.assert_allclose(losses.targeted_dlr(3.0 * z - 2.0, y, t),
                             losses.targeted_dlr(z, y, t), rtol=1e-5)


# --- APGD --------------------------------------------------------------------


def test_step_size_checkpoints_match_the_reference():
  after, window = apgd.checkpoints(100)
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  assert after == [22, 41, 57, 70, 80, 87, 93, 99]
  assert window == [22, 19, 16, 13, 10, 7, 6, 6]
  # The reference's counter logic, independently: counter3 counts up to k.
  for n in (10, 37, 100, 250):
    k, k_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    expect, counter = [], 0
    for i in range(n):
      counter += 1
      if counter == k:
        expect.append(i + 1)
        k, counter = max(k - decr, k_min), 0
    assert apgd.checkpoints(n)[0] == expect, n


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, True)])
def test_apgd_ce_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd.apgd_ce(f, x, y, eps=eps, keys=k))(x, y, keys_for(len(y)))
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)
  broken = ~np.asarray(res.robust)
  assert np.all(np.argmax(np.asarray(f(res.x_adv)), -1)[broken] != np.asarray(y)[broken])


@pytest.mark.parametrize("num_classes,disjoint", [(2, False), (10, False)])
def test_apgd_t_reaches_the_exact_robust_accuracy(num_classes, disjoint):
  f, x, y, dist = linear_problem(num_classes, disjoint=disjoint, seed=1)
  eps, x, y, dist = eps_and_subset(dist, x, y)
  res = jax.jit(lambda x, y, k: apgd.apgd_targeted(f, x, y, eps=eps, keys=k))(
      x, y, keys_for(len(y)))
  np.testing.assert_array_equal(np.asarray(res.robust), dist > eps)
  assert float(jnp.max(jnp.abs(res.x_adv - x))) <= eps * (1 + 1e-5)


def test_apgd_is_per_sample_and_deterministic():
  f, x, y, dist = linear_problem(10, n=32, seed=2)
  eps = float(np.quantile(dist, 0.5))
  keys = keys_for(32, seed=3)
  run = jax.jit(lambda x, y, k: apgd.apgd_ce(f, x, y, eps=eps, keys=k, num_iters=20))
  full, again, half = run(x, y, keys), run(x, y, keys), run(x[:16], y[:16], keys[:16])
  np.testing.assert_array_equal(full.x_adv, again.x_adv)
  np.testing.assert_array_equal(full.x_adv[:16], half.x_adv)
  np.testing.assert_array_equal(full.robust[:16], half.robust)
