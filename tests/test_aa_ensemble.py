"""The ensemble on a model where attacks break points the previous ones
could not.

Status: APGD-CE, APGD-T and Square each contribute on their group; the FAB-T
group (C) does not yet separate FAB-T from APGD-T (APGD-T still breaks those
points: the DLR loss is constant only up to rounding), so FAB-T's share is
not asserted.

Pixel 0 of each 8x8 image marks its group (0.125, 0.375, 0.625, 0.875; eps
is too small to move it across a quarter), and the group picks the model:

* A: a linear model. APGD-CE breaks what is breakable.
* B: the same, logits times 10^4: the softmax saturates, so the CE gradient
  is exactly zero and APGD-CE stays at its random start; the DLR loss is
  scale-invariant and APGD-T breaks them.
* C: logits times 10^4 again, two real classes and eight equal decoys at
  ``z_y - 2 (z_y - z_t)``: the targeted DLR loss's denominator is then twice
  its numerator, the loss is constant and its gradient zero (to rounding),
  so APGD-T cannot move; FAB-T linearises ``z_t - z_y`` only and finds the
  minimal perturbation.
* D: the linear model on ``stop_gradient(x)``: every gradient is zero, only
  Square's random search breaks them.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from caat_jax.attacks import autoattack, verify
from tests.test_autoattack import keys_for

N_PER, D, K = 24, 64, 10
MARKS = (0.125, 0.375, 0.625, 0.875)
EPS = 0.01


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D, K)) * 0.3
  w[0] = 0.0  # the marker pixel carries no weight
  b = 0.05 * rng.normal(size=K)
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

  def f(v):
    flat = v.reshape(v.shape[0], -1)
    group = jax.lax.stop_gradient(jnp.floor(flat[:, :1] * 4.0))
    za = (flat - 0.5) @ w + b  # centred: margins of the order of what eps can move
    hi, lo = jnp.max(za[:, :2], -1, keepdims=True), jnp.min(za[:, :2], -1, keepdims=True)
    decoys = jnp.broadcast_to(hi - 2.0 * (hi - lo), (len(flat), K - 2))
    zc = 1e4 * jnp.concatenate([za[:, :2], decoys], -1)
    zd = (jax.lax.stop_gradient(flat) - 0.5) @ w + b
    return jnp.where(group == 0, za, jnp.where(group == 1, 1e4 * za,
                                                jnp.where(group == 2, zc, zd)))

  x = rng.uniform(0.3, 0.7, (4 * N_PER, D)).astype(np.float32)
  x[:, 0] = np.repeat(MARKS, N_PER)
  x = jnp.asarray(x.reshape(-1, 8, 8, 1))
  return f, x, jnp.argmax(f(x), -1)


@pytest.mark.slow
def test_each_attack_breaks_points_the_previous_ones_did_not():
  f, x, y = _problem()
  opts = {"square": {"num_queries": 1000}}
  res, stages = jax.jit(lambda x, y, k: autoattack.autoattack(
      f, x, y, eps=EPS, keys=k, options=opts))(x, y, keys_for(len(y)))
  stages = {k: np.asarray(v) for k, v in stages.items()}
  group = np.repeat(np.arange(4), N_PER)
  order = ["clean", *autoattack.STANDARD]
  newly = {b: stages[a] & ~stages[b] for a, b in zip(order, order[1:])}
  for g, name in ((0, "apgd-ce"), (1, "apgd-t"), (3, "square")):
    # Each attack breaks points of the group built for it.
    assert newly[name][group == g].sum() > 0, (name, {k: v.sum() for k, v in newly.items()})
  assert stages["square"].sum() > 0  # some points stay robust
  checked, summary = verify.verify(f, x, y, res.x_adv, EPS, res.robust)
  assert verify.problems(summary, EPS) == []
  np.testing.assert_array_equal(checked, res.robust)
