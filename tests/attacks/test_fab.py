"""FAB-T against closed forms: the L-inf projection onto a hyperplane in the
box, the minimal perturbation of a linear classifier, the box-corner fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax.attacks import fab
from tests.helpers import eps_and_subset, keys_for, linear_problem


def test_linf_projection_onto_a_hyperplane_in_the_box():
  """Against the definition: feasible, and no smaller norm reaches the plane."""
  rng = np.random.default_rng(0)
  n, d = 64, 20
  t = rng.uniform(0.0, 1.0, (n, d))
  w = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) > 0.2)
  b = np.sum(w * rng.uniform(0.0, 1.0, (n, d)), -1)  # a plane that meets the box
  step = np.asarray(fab.project_linf(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  z = t + step
  np.testing.assert_allclose(np.sum(w * z, -1), b, atol=1e-5)  # float32
  assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
  # The best a norm of lam can do is move each coordinate lam towards the plane.
  lam = 0.99 * np.abs(step).max(-1, keepdims=True)
  c = np.sum(w * t, -1) - b
  toward = -np.sign(c)[:, None] * np.sign(w)
  best = t + np.clip(toward * lam, -t, 1 - t)
  assert np.all(np.abs(np.sum(w * best, -1) - b) > 0)
  assert np.all(np.sign(np.sum(w * best, -1) - b) == np.sign(c))


@pytest.mark.parametrize("num_classes", [2, 10])
def test_fab_t_finds_the_minimal_perturbation(num_classes):
  f, x, y, dist = linear_problem(num_classes, n=64, seed=4)
  # eps = 0: nothing counts as broken, so every target runs and ``norm`` is
  # the smallest perturbation over all of them.
  res, norm = jax.jit(lambda x, y, k: fab.fab_targeted(f, x, y, eps=0.0, keys=k))(
    x, y, keys_for(len(y))
  )
  norm = np.asarray(norm)
  # FAB's overshoot (eta = 1.05) then backward step (beta = 0.9) settle about
  # 0.5% above the boundary.
  np.testing.assert_allclose(norm, dist, rtol=0.01)
  assert np.all(norm >= dist * (1 - 1e-4))
  np.testing.assert_array_equal(res.robust, np.ones(len(y), bool))  # eps = 0
  # With eps between the distances, robust = dist > eps.
  eps, x2, y2, dist2 = eps_and_subset(dist, x, y)
  res2, _ = fab.fab_targeted(f, x2, y2, eps=eps, keys=keys_for(len(y2)))
  np.testing.assert_array_equal(np.asarray(res2.robust), dist2 > eps)


N, HW, C = 16, 6, 3


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
