"""FRL multipliers, class weights and margins (docs/method.md §7) against hand
computations."""

import jax.numpy as jnp
import numpy as np

from caat_jax.caat import bounds, fairness


def test_frl_multiplier_update_by_hand():
  lams = {k: np.zeros(3, np.float32) for k in ("lambda0", "lambda1", "lambda2")}
  nat = np.array([0.1, 0.2, 0.6])  # mean 0.3
  bnd = np.array([0.3, 0.3, 0.0])  # mean 0.2
  new = fairness.update(lams, nat, bnd, epoch=0)
  g0 = nat - 0.3 - 0.07  # [-0.27, -0.17, 0.23]
  g1 = bnd - 0.2 - 0.07  # [0.03, 0.03, -0.27]
  np.testing.assert_allclose(new["lambda0"], np.maximum(0.05 * g0, 0), atol=1e-7)
  np.testing.assert_allclose(new["lambda1"], np.maximum(0.1 * g1, 0), atol=1e-7)
  np.testing.assert_allclose(new["lambda2"], 0.2 * g1, atol=1e-7)  # unprojected
  # halving before the reference's epoch 40 (1-based; our 0-based epoch 39),
  # and the rescale to lim when the sum exceeds it
  big = fairness.update(
    {"lambda0": np.array([0.4, 0.4, 0.0]), "lambda1": np.zeros(3), "lambda2": np.zeros(3)},
    nat,
    bnd,
    epoch=39,
  )
  l0 = np.maximum(np.array([0.4, 0.4, 0.0]) + 0.025 * g0, 0)
  np.testing.assert_allclose(big["lambda0"], l0 * 0.5 / l0.sum(), rtol=1e-6)


def test_class_weights_and_margins():
  lam = jnp.array([0.3, 0.0, 0.0, 0.1])
  w = np.asarray(fairness.class_weights(lam))
  np.testing.assert_allclose(w, 0.25 + np.array([0.3, 0.0, 0.0, 0.1]) - 0.1, rtol=1e-6)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  m = np.asarray(fairness.margin_multipliers(jnp.array([-1.0, 0.0, 0.1, 2.0])))
  np.testing.assert_allclose(m, [0.98, 1.0, np.exp(0.2), 2.5], rtol=1e-6)
  eps = np.asarray(bounds.remargin(0.1, jnp.array([3, 2]), jnp.array([-1.0, 0.0, 0.1, 2.0])))
  np.testing.assert_allclose(eps, [0.25, 0.1 * np.exp(0.2)], rtol=1e-6)
  # sample factors turn the batch mean into sum w_y l / sum w_y
  y = jnp.array([0, 0, 1, 3])
  f = fairness.sample_factors(jnp.asarray(w), y, None)
  l = jnp.array([1.0, 2.0, 3.0, 4.0])
  wy = w[np.asarray(y)]
  np.testing.assert_allclose(
    float(jnp.mean(f * l)), (wy * np.asarray(l)).sum() / wy.sum(), rtol=1e-6
  )
