"""Bounds (docs/method.md §4) against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, losses
from caat_jax.caat import bounds


def test_grad_bound_matches_per_sample_gradient_norms():
  """Eq. 26 with per-sample alpha/beta: g_adv_i = ||grad KL(f(x) || f(.))|| at
  the adversary's own start point (adv_keys), g_at_i = ||grad CE(f(.), y)|| at
  the anti-adversary's own start point (at_keys: the two must not share a start point), each over
  its batch maximum, by a per-sample loop; and the 'clean' point option."""
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
  f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w)
  x = (
    jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 1))
    * jnp.array([1, 2, 4, 8.0])[:, None, None, None]
  )
  x = jnp.clip(x, 0, 1)
  y = jnp.array([0, 1, 2, 1])
  adv_keys = jax.random.split(jax.random.PRNGKey(2), 4)
  at_keys = jax.random.split(jax.random.PRNGKey(3), 4)
  alpha = jnp.array([1.0, 0.25, 0.5, 0.0])
  eps = np.asarray(
    bounds.grad_based(f, x, y, f(x), alpha, 1 - alpha, eps=0.1, adv_keys=adv_keys, at_keys=at_keys)
  )
  start = lambda keys: attacks.random_start(x, jnp.full((4,), 0.1), keys, "gaussian")
  s_adv, s_at = start(adv_keys), start(at_keys)
  g_adv, g_at = [], []
  for i in range(4):
    kl = lambda z: losses.kl_divergence(f(x[i : i + 1]), f(z[None]))[0]
    ce = lambda z: losses.cross_entropy(f(z[None]), y[i : i + 1])[0]
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
  g_shared = np.array(
    [
      float(
        jnp.linalg.norm(
          jax.grad(lambda z: losses.cross_entropy(f(z[None]), y[i : i + 1])[0])(s_adv[i])
        )
      )
      for i in range(4)
    ]
  )
  assert not np.allclose(g_shared / g_shared.max(), g_at / g_at.max(), rtol=1e-4)
  # point='clean': the CE input-gradient norm at x, for both terms
  eps_c = np.asarray(
    bounds.grad_based(
      f, x, y, f(x), alpha, 1 - alpha, eps=0.1, adv_keys=adv_keys, at_keys=at_keys, point="clean"
    )
  )
  g = np.array(
    [
      float(
        jnp.linalg.norm(jax.grad(lambda z: losses.cross_entropy(f(z[None]), y[i : i + 1])[0])(x[i]))
      )
      for i in range(4)
    ]
  )
  np.testing.assert_allclose(eps_c, (g / g.max() + 0.9) * 0.1, rtol=1e-5)
