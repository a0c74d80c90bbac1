"""ImageNet ResNet-50 (v1.5).

ResNet-50 follows torchvision's ``resnet50`` (He et al. 2016, "Deep Residual
Learning", with the "v1.5" change of putting the stride-2 on the 3x3 conv of
the bottleneck rather than on the first 1x1): 7x7/2 stem, 3x3/2 max pool, four
stages of [3, 4, 6, 3] bottlenecks of widths 64, 128, 256, 512 (x4 expansion),
global average pool, dense. 25,557,032 parameters with 1000 classes, the same as
torchvision, so PyTorch checkpoints map one to one.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from caat_jax.models.layers import (
  Dtype,
  batch_norm,
  classifier_head,
  conv,
  normalize,
  residual_stages,
)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), post-activation.

  Attributes:
    width: channels of the inner 1x1 / 3x3 convs; the block outputs 4 * width.
    stride: stride of the 3x3 conv (and of the projection shortcut).
  """

  width: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """[B, H, W, C_in] -> [B, H / stride, W / stride, 4 * width]."""
    bn = functools.partial(batch_norm, train, self.axis_name, self.dtype)
    out_features = 4 * self.width
    y = nn.relu(bn()(conv(self.width, 1, 1, self.dtype)(x)))
    y = nn.relu(bn()(conv(self.width, 3, self.stride, self.dtype)(y)))
    y = bn()(conv(out_features, 1, 1, self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = conv(out_features, 1, self.stride, self.dtype, name="proj_conv")(x)
      x = bn(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ImageNet ResNet with bottleneck blocks (ResNet-50/101/152 v1.5).

  Attributes:
    stage_sizes: bottlenecks per stage, [3, 4, 6, 3] for ResNet-50.
    num_classes: number of logits.
    mean, std: per-channel input normalisation, applied first (pixel inputs).
    dtype: compute dtype; parameters and logits stay float32.
    axis_name: device axis for BatchNorm statistics under pmap / shard_map.
  """

  stage_sizes: Sequence[int]
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """[B, H, W, 3] pixels in [0, 1] -> float32 logits [B, num_classes]."""
    x = normalize(x, self.mean, self.std, self.dtype)
    x = conv(64, 7, 2, self.dtype, name="stem_conv")(x)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = residual_stages(
      x,
      Bottleneck,
      widths=[64 * 2**i for i in range(len(self.stage_sizes))],
      depths=self.stage_sizes,
      strides=[1] + [2] * (len(self.stage_sizes) - 1),
      train=train,
      dtype=self.dtype,
      axis_name=self.axis_name,
    )
    return classifier_head(x, self.num_classes, self.dtype)


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
