"""The DLR loss against hand-computed values and its invariances."""

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import losses


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
  np.testing.assert_allclose(
    losses.targeted_dlr(3.0 * z - 2.0, y, t), losses.targeted_dlr(z, y, t), rtol=1e-5
  )
