"""Strategy networks on the six characteristics (Flax Linen modules).

``WeightingNet`` is Meta-CAAT's f_Omega (SPEC 5): an MLP 6 -> hidden (ReLU)
-> 2 with output ``softmax(z / tau)`` = [alpha_i, beta_i].
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class WeightingNet(nn.Module):
  """[B, 6] standardised features -> [B, 2] weights (alpha, beta), rows sum to 1.

  Attributes:
    hidden: hidden width (100 in the paper).
    tau: softmax temperature. Small tau gives near one-hot weights but
      saturates the softmax, which kills the meta-gradient (the official
      tau = 0.001 does); the default 1.0 keeps it alive at init.
  """

  hidden: int = 100
  tau: float = 1.0

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden)(z))
    logits = nn.Dense(2)(h)
    return jax.nn.softmax(logits / self.tau, axis=-1)
