"""PGD with per-sample eps / sign / loss (docs/method.md §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import attacks, losses

B, D, C = 12, 6, 3


def _mlp(key):
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (D * D, 16)) / D
  w2 = jax.random.normal(k2, (16, C)) / 4
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _data(key):
  kx, ky = jax.random.split(key)
  x = jax.random.uniform(kx, (B, D, D, 1))
  y = jax.random.randint(ky, (B,), 0, C)
  return x, y


def _keys(seed=0, n=B):
  return jax.random.split(jax.random.PRNGKey(seed), n)


@pytest.mark.parametrize("start", ["uniform", "gaussian"])
def test_stays_in_ball_and_box(start):
  f = _mlp(jax.random.PRNGKey(0))
  x, y = _data(jax.random.PRNGKey(1))
  eps = jnp.linspace(0.0, 0.3, B)  # includes eps = 0 and bounds past the box
  sign = jnp.where(jnp.arange(B) % 2 == 0, 1.0, -1.0)
  kind = jnp.where(jnp.arange(B) % 3 == 0, attacks.LOSS_KL, attacks.LOSS_CE)
  x_adv = attacks.pgd(
    f,
    x,
    y,
    eps=eps,
    step_size=jnp.full((B,), 0.1),
    num_steps=5,
    keys=_keys(),
    sign=sign,
    loss_kind=kind,
    clean_logits=f(x),
    start=start,
  )
  dist = jnp.max(jnp.abs(x_adv - x).reshape(B, -1), axis=1)
  assert np.all(np.asarray(dist) <= np.asarray(eps) + 1e-6)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  np.testing.assert_array_equal(x_adv[0], x[0])  # eps = 0 leaves the point alone
  assert float(jnp.max(dist[B // 2 :])) > 0.1  # large bounds are actually used


def test_sign_raises_and_lowers_the_loss():
  f = _mlp(jax.random.PRNGKey(2))
  x, y = _data(jax.random.PRNGKey(3))
  eps = jnp.full((B,), 0.1)
  ce0 = losses.cross_entropy(f(x), y)
  run = lambda s: attacks.pgd(
    f,
    x,
    y,
    eps=eps,
    step_size=eps / 4,
    num_steps=10,
    keys=_keys(),
    sign=jnp.full((B,), s),
    start="none",
  )
  ce_adv = losses.cross_entropy(f(run(1.0)), y)
  ce_anti = losses.cross_entropy(f(run(-1.0)), y)
  assert np.all(np.asarray(ce_adv) > np.asarray(ce0))
  assert np.all(np.asarray(ce_anti) < np.asarray(ce0))


def test_kl_adversary_moves_away_from_clean_prediction():
  f = _mlp(jax.random.PRNGKey(4))
  x, y = _data(jax.random.PRNGKey(5))
  kind = jnp.full((B,), attacks.LOSS_KL)
  x_adv = attacks.pgd(
    f,
    x,
    y,
    eps=jnp.full((B,), 0.1),
    step_size=jnp.full((B,), 0.025),
    num_steps=10,
    keys=_keys(),
    loss_kind=kind,
    clean_logits=f(x),
    start="gaussian",
  )
  kl = losses.kl_divergence(f(x), f(x_adv))
  assert np.all(np.asarray(kl) > 1e-4)


def test_vmapped_batch_equals_per_sample_loop():
  f = _mlp(jax.random.PRNGKey(6))
  x, y = _data(jax.random.PRNGKey(7))
  eps = jnp.linspace(0.02, 0.2, B)
  sign = jnp.where(jnp.arange(B) % 2 == 0, 1.0, -1.0)
  kind = jnp.where(jnp.arange(B) % 3 == 0, attacks.LOSS_KL, attacks.LOSS_CE)
  step = eps / 4
  keys = _keys(8)
  clean = f(x)
  kw = dict(num_steps=7, start="uniform")
  batched = attacks.pgd(
    f, x, y, eps=eps, step_size=step, keys=keys, sign=sign, loss_kind=kind, clean_logits=clean, **kw
  )
  for i in range(B):
    s = slice(i, i + 1)
    single = attacks.pgd(
      f,
      x[s],
      y[s],
      eps=eps[s],
      step_size=step[s],
      keys=keys[s],
      sign=sign[s],
      loss_kind=kind[s],
      clean_logits=clean[s],
      **kw,
    )
    np.testing.assert_allclose(batched[i], single[0], atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_linear_classifier_reaches_analytic_worst_case(sign):
  """Two-class linear model: the CE gradient's sign is constant (it is
  sign(w1 - w0) for label 0), so PGD ends at the corner x - sign * eps *
  sign(w1 - w0) and the logit margin changes by exactly eps * ||w1 - w0||_1."""
  key = jax.random.PRNGKey(9)
  w = jax.random.normal(key, (D * D, 2))
  f = lambda x: x.reshape(x.shape[0], -1) @ w
  x = 0.3 + 0.4 * jax.random.uniform(jax.random.PRNGKey(10), (B, D, D, 1))  # away from the box
  y = jnp.zeros((B,), jnp.int32)
  eps = jnp.linspace(0.01, 0.2, B)
  x_adv = attacks.pgd(
    f,
    x,
    y,
    eps=eps,
    step_size=eps / 4,
    num_steps=10,
    keys=_keys(),
    sign=jnp.full((B,), sign),
    start="uniform",
  )
  margin = lambda z: f(z)[:, 0] - f(z)[:, 1]
  change = margin(x) - margin(x_adv)  # > 0: the adversary shrinks label 0's margin
  expected = sign * eps * jnp.sum(jnp.abs(w[:, 1] - w[:, 0]))
  np.testing.assert_allclose(change, expected, rtol=1e-4, atol=1e-5)
