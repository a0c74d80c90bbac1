"""Strategy networks on the six characteristics (Flax Linen modules).

``WeightingNet`` is Meta-CAAT's f_Omega (docs/method.md §5): an MLP 6 -> hidden (ReLU)
-> 2 with output ``softmax(z / tau)`` = [alpha_i, beta_i]. ``PolicyNet`` is
Reinforce-CAAT's (docs/method.md §6): the same MLP with one joint head over (direction,
bound).
"""

import flax.linen as nn
import jax


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


class PolicyNet(nn.Module):
  """Reinforce-CAAT's strategy net f_Omega (Section 4.4, docs/method.md §6).

  [B, 6] standardised features -> joint logits [B, 2, num_bounds] of one
  categorical over the 2 x num_bounds strategies s = (direction, bound):
  direction 0 is the adversary, 1 the anti-adversary; bound k is the k-th
  entry of the bound set ({3, ..., 15} / 255 by default). Joint rather than
  factorised (``p(dir) p(bound)``), so adversaries and anti-adversaries of
  the same sample can prefer different bounds (the paper's Fig. 10b, d).

  The head starts at zero, so the initial policy is exactly uniform over the
  26 strategies (maximal entropy, every strategy tried, p(adv) = 1/2) for any
  features; the paper does not say how it initialises. The head's kernel
  still gets gradient at once (the hidden activations are non-zero), the
  hidden layer from the first update on.

  Attributes:
    hidden: hidden width (100, as Meta-CAAT's weighting net).
    num_bounds: size of the bound set (13).
  """

  hidden: int = 100
  num_bounds: int = 13

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden)(z))
    logits = nn.Dense(2 * self.num_bounds, kernel_init=nn.initializers.zeros, name="strategy")(h)
    return logits.reshape(z.shape[0], 2, self.num_bounds)
