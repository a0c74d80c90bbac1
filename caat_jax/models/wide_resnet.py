"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation, for 32x32 inputs.

As in the Madry et al. / TRADES code: a 3x3 stem with 16 channels, three
stages of ``(depth - 4) / 6`` basic blocks with 16k, 32k, 64k channels and
strides 1, 2, 2, final BN-ReLU, global average pool, dense. WRN-28-10 has
36,479,194 parameters and WRN-34-10 46,160,474 (10 classes), the published
36.5M / 46.2M. (TRADES' PyTorch class also builds an unused ``sub_block1``;
it takes no part in the forward pass and is not built here.) Dropout is left
out: the adversarial-training recipes use ``dropRate = 0``.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from caat_jax.models import preact_resnet
from caat_jax.models.layers import (
  Dtype,
  batch_norm,
  classifier_head,
  conv,
  normalize,
  residual_stages,
)

# The WRN block of the TRADES / Madry code is exactly the pre-activation basic
# block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, with the 1x1 projection shortcut
# reading the activated input when the shape changes (``equalInOut``).
WideBlock = preact_resnet.PreActBlock


class WideResNet(nn.Module):
  """WRN-depth-k for CIFAR-size inputs.

  Attributes:
    depth: total depth, 6n + 4 (28 or 34 in the adversarial literature).
    widen_factor: k, multiplies the 16/32/64 base widths.
    num_classes: number of logits.
    mean, std: per-channel input normalisation, applied first (pixel inputs).
    dtype: compute dtype; parameters and logits stay float32.
    axis_name: device axis for BatchNorm statistics under pmap / shard_map.
  """

  depth: int
  widen_factor: int
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """[B, H, W, C] pixels in [0, 1] -> float32 logits [B, num_classes]."""
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}.")
    blocks_per_stage = (self.depth - 4) // 6
    x = normalize(x, self.mean, self.std, self.dtype)
    x = conv(16, 3, 1, self.dtype, name="stem_conv")(x)
    x = residual_stages(
      x,
      WideBlock,
      widths=[16 * 2**i * self.widen_factor for i in range(3)],
      depths=[blocks_per_stage] * 3,
      strides=(1, 2, 2),
      train=train,
      dtype=self.dtype,
      axis_name=self.axis_name,
    )
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="final_bn")(x))
    return classifier_head(x, self.num_classes, self.dtype)


WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)
WRN34_10 = functools.partial(WideResNet, depth=34, widen_factor=10)
