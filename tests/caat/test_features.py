"""Characteristics, bounds and FRL multipliers against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, losses
from caat_jax.caat import bounds, features, fairness


def test_features_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
  y = jnp.array([0, 1])
  prop = jnp.array([0.5, 0.3, 0.2])
  avg = jnp.array([1.0, 2.0, 3.0])
  z = np.asarray(features.features(logits, y, prop, avg))
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


def test_class_average_loss_is_the_previous_epochs_average():
  """Issue 11, defect 6: feature 6 is each class's average of feature 1 (the
  inference-mode CE) over the previous epoch; during the first epoch the
  running average so far. Checked against a loop over recorded losses."""
  rng = np.random.default_rng(0)
  c, steps_per_epoch, epochs, b = 3, 4, 3, 6
  cfg = type("Cfg", (), {"feature_momentum": 0.9, "feature_mask": (1,) * 6})
  stats = features.init_running_stats(c)
  seen = []  # (epoch, labels, losses) recorded as the step sees them
  for step in range(steps_per_epoch * epochs):
    logits = jnp.asarray(rng.normal(size=(b, c)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, b))  # class 2 never appears
    new_epoch = step > 0 and step % steps_per_epoch == 0
    prev = stats
    _, stats = features.strategy_inputs(logits, y, (5, 5, 5), stats, cfg, None, new_epoch)
    feature6 = np.asarray(features.class_average_loss(
        features.start_epoch(prev, jnp.asarray(new_epoch))))
    epoch = step // steps_per_epoch
    # by hand: the previous epoch's average, or this epoch's so far in epoch 0
    pool = [(l, ll) for e, l, ll in seen if e == max(epoch - 1, 0)]
    for k in range(c):
      vals = [v for labels, losses in pool for lab, v in zip(labels, losses) if lab == k]
      want = np.mean(vals) if vals else 0.0
      np.testing.assert_allclose(feature6[k], want, rtol=1e-5, atol=1e-6)
    ce = np.asarray(losses.cross_entropy(logits, y))
    seen.append((epoch, np.asarray(y), ce))
  assert epochs >= 3


def test_standardise_uses_bias_corrected_running_moments():
  stats = features.init_running_stats(2)
  zeta = jnp.array(np.random.default_rng(0).normal(3.0, 2.0, (500, 6)), jnp.float32)
  z, s = features.standardise(stats, zeta, 0.99, None)
  # after one update the bias-corrected moments are the batch's own
  np.testing.assert_allclose(np.asarray(z).mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(z).std(0), 1.0, atol=1e-3)
  z2, _ = features.standardise(s, zeta + 10.0, 0.99, None)
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
  # halving before the reference's epoch 40 (1-based; our 0-based epoch 39),
  # and the rescale to lim when the sum exceeds it
  big = fairness.update({"lambda0": np.array([0.4, 0.4, 0.0]), "lambda1": np.zeros(3),
                         "lambda2": np.zeros(3)}, nat, bnd, epoch=39)
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
  """Eq. 26 with per-sample alpha/beta: g_adv_i = ||grad KL(f(x) || f(.))|| at
  the adversary's own start point (adv_keys), g_at_i = ||grad CE(f(.), y)|| at
  the anti-adversary's own start point (at_keys; issue 11, defect 7), each over
  its batch maximum, by a per-sample loop; and the 'clean' point option."""
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
  f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 1)) * jnp.array([1, 2, 4, 8.0])[:, None, None, None]
  x = jnp.clip(x, 0, 1)
  y = jnp.array([0, 1, 2, 1])
  adv_keys = jax.random.split(jax.random.PRNGKey(2), 4)
  at_keys = jax.random.split(jax.random.PRNGKey(3), 4)
  alpha = jnp.array([1.0, 0.25, 0.5, 0.0])
  eps = np.asarray(bounds.grad_based(f, x, y, f(x), alpha, 1 - alpha, eps=0.1,
                                     adv_keys=adv_keys, at_keys=at_keys))
  start = lambda keys: attacks.random_start(x, jnp.full((4,), 0.1), keys, "gaussian")
  s_adv, s_at = start(adv_keys), start(at_keys)
  g_adv, g_at = [], []
  for i in range(4):
    kl = lambda z: losses.kl_divergence(f(x[i:i + 1]), f(z[None]))[0]
    ce = lambda z: losses.cross_entropy(f(z[None]), y[i:i + 1])[0]
    g_adv.append(float(jnp.linalg.norm(jax.grad(kl)(s_adv[i]))))
    g_at.append(float(jnp.linalg.norm(jax.grad(ce)(s_at[i]))))
  g_adv, g_at = np.array(g_adv), np.array(g_at)
  a = np.asarray(alpha)
  want = (a * g_adv / g_adv.max() + (1 - a) * g_at / g_at.max() + 0.9) * 0.1
  # rtol 1e-4: the KL gradient 0.001 from its minimum is a float32 difference
  # of nearly equal terms (about 2e-5 apart between the batched and the loop).
  np.testing.assert_allclose(eps, want, rtol=1e-4)
  assert eps.min() < eps.max() - 1e-3  # the bounds really differ per sample
  # the anti-adversary's gradient is taken at its own start, not the adversary's
  g_shared = np.array([float(jnp.linalg.norm(jax.grad(
      lambda z: losses.cross_entropy(f(z[None]), y[i:i + 1])[0])(s_adv[i]))) for i in range(4)])
  assert not np.allclose(g_shared / g_shared.max(), g_at / g_at.max(), rtol=1e-4)
  # point='clean': the CE input-gradient norm at x, for both terms
  eps_c = np.asarray(bounds.grad_based(f, x, y, f(x), alpha, 1 - alpha, eps=0.1,
                                       adv_keys=adv_keys, at_keys=at_keys, point="clean"))
  g = np.array([float(jnp.linalg.norm(jax.grad(
      lambda z: losses.cross_entropy(f(z[None]), y[i:i + 1])[0])(x[i]))) for i in range(4)])
  np.testing.assert_allclose(eps_c, (g / g.max() + 0.9) * 0.1, rtol=1e-5)
