"""Characteristics (docs/method.md §3) against hand computations."""

import jax.numpy as jnp
import numpy as np

from caat_jax import losses
from caat_jax.caat import features


def test_features_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
  y = jnp.array([0, 1])
  prop = jnp.array([0.5, 0.3, 0.2])
  avg = jnp.array([1.0, 2.0, 3.0])
  z = np.asarray(features.features(logits, y, prop, avg))
  p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
  np.testing.assert_allclose(z[:, 0], [-np.log(0.7), -np.log(0.25)], rtol=1e-6)
  np.testing.assert_allclose(z[:, 1], [0.7 - 0.2, 0.25 - 0.5], rtol=1e-6)
  np.testing.assert_allclose(
    z[:, 2], [np.linalg.norm([0.3, -0.2, -0.1]), np.linalg.norm([-0.25, 0.75, -0.5])], rtol=1e-6
  )
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
    feature6 = np.asarray(
      features.class_average_loss(features.start_epoch(prev, jnp.asarray(new_epoch)))
    )
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
  q1, q2 = (a**2).mean(0), ((a + 10) ** 2).mean(0)
  corr = 1 - 0.99**2
  mu = (0.99 * 0.01 * m1 + 0.01 * m2) / corr
  var = (0.99 * 0.01 * q1 + 0.01 * q2) / corr - mu**2
  np.testing.assert_allclose(np.asarray(z2)[0], (a[0] + 10 - mu) / np.sqrt(var), rtol=1e-4)
