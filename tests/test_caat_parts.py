"""Characteristics, bounds and FRL multipliers against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, bounds, characteristics, fairness, losses


def test_features_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
  y = jnp.array([0, 1])
  prop = jnp.array([0.5, 0.3, 0.2])
  avg = jnp.array([1.0, 2.0, 3.0])
  z = np.asarray(characteristics.features(logits, y, prop, avg))
  p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
  np.testing.assert_allclose(z[:, 0], [-np.log(0.7), -np.log(0.25)], rtol=1e-6)
  np.testing.assert_allclose(z[:, 1], [0.7 - 0.2, 0.25 - 0.5], rtol=1e-6)
  np.testing.assert_allclose(z[:, 2], [np.linalg.norm([0.3, -0.2, -0.1]),
                                       np.linalg.norm([-0.25, 0.75, -0.5])], rtol=1e-6)
  ent = -(p * np.log2(p)).sum(1)
  np.testing.assert_allclose(z[:, 3], ent, rtol=1e-6)
  assert np.all(z[:, 3] > 0)  # positive, unlike the official code's
  np.testing.assert_allclose(z[:, 4], [0.5, 0.3])
  np.testing.assert_allclose(z[:, 5], [1.0, 2.0])


def test_class_average_loss_really_updates():
  stats = characteristics.init_running_stats(3)
  loss = jnp.array([1.0, 3.0, 2.0, 5.0])
  y = jnp.array([0, 0, 1, 1])
  s1 = characteristics.update_class_loss(stats, loss, y, 3, 0.9, None)
  np.testing.assert_allclose(s1["class_loss"], [2.0, 3.5, 0.0])  # first sight: batch mean
  s2 = characteristics.update_class_loss(s1, jnp.array([4.0, 0.0]), jnp.array([0, 2]), 3, 0.9, None)
  np.testing.assert_allclose(s2["class_loss"], [0.9 * 2.0 + 0.1 * 4.0, 3.5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s2["class_loss_seen"], [1, 1, 1])


def test_standardise_uses_bias_corrected_running_moments():
  stats = characteristics.init_running_stats(2)
  zeta = jnp.array(np.random.default_rng(0).normal(3.0, 2.0, (500, 6)), jnp.float32)
  z, s = characteristics.standardise(stats, zeta, 0.99, None)
  # after one update the bias-corrected moments are the batch's own
  np.testing.assert_allclose(np.asarray(z).mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(z).std(0), 1.0, atol=1e-3)
  z2, _ = characteristics.standardise(s, zeta + 10.0, 0.99, None)
  a = np.asarray(zeta, np.float64)
  m1, m2 = a.mean(0), a.mean(0) + 10
  q1, q2 = (a ** 2).mean(0), ((a + 10) ** 2).mean(0)
  corr = 1 - 0.99 ** 2
  mu = (0.99 * 0.01 * m1 + 0.01 * m2) / corr
  var = (0.99 * 0.01 * q1 + 0.01 * q2) / corr - mu ** 2
  np.testing.assert_allclose(np.asarray(z2)[0], (a[0] + 10 - mu) / np.sqrt(var), rtol=1e-4)


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
  # halving after 40 epochs, and the rescale to lim when the sum exceeds it
  big = fairness.update({"lambda0": np.array([0.4, 0.4, 0.0]), "lambda1": np.zeros(3),
                         "lambda2": np.zeros(3)}, nat, bnd, epoch=40)
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
  np.testing.assert_allclose(float(jnp.mean(f * l)), (wy * np.asarray(l)).sum() / wy.sum(), rtol=1e-6)


def test_grad_bound_matches_per_sample_gradient_norms():
  """Eq. 26 with beta = 1 (all anti-adversarial): eps_i = (g_at_i / max g_at + 0.9) eps,
  g_at_i = ||grad_x CE(f(x_i'), y_i)||_2 at the start point, by a per-sample loop."""
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 1)) * jnp.array([1, 2, 4, 8.0])[:, None, None, None]
  x = jnp.clip(x, 0, 1)
  y = jnp.array([0, 1, 2, 1])
  keys = jax.random.split(jax.random.PRNGKey(2), 4)
  beta = jnp.ones(4)
  eps = np.asarray(bounds.grad_based(f, x, y, f(x), 1 - beta, beta, eps=0.1, keys=keys))
  start = attacks.random_start(x, jnp.full((4,), 0.1), keys, "gaussian")
  norms = []
  for i in range(4):
    g = jax.grad(lambda z: losses.cross_entropy(f(z[None]), y[i:i + 1])[0])(start[i])
    norms.append(float(jnp.linalg.norm(g)))
  norms = np.array(norms)
  np.testing.assert_allclose(eps, (norms / norms.max() + 0.9) * 0.1, rtol=1e-5)
  assert eps.min() < eps.max() - 1e-3  # the bounds really differ per sample
