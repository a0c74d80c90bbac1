"""Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016, "Identity
Mappings in Deep Residual Networks").

The CIFAR variant used throughout the adversarial-training literature (Rice et
al. 2020, Wong et al. 2020, the CAAT paper's code): a 3x3/1 stem conv with 64
channels and no max pool, four stages of two pre-activation basic blocks with
widths 64, 128, 256, 512 and strides 1, 2, 2, 2, a final BN-ReLU (the inputs to
the head are otherwise never normalised), global average pool and dense.
11,172,170 parameters for 10 classes (counting BatchNorm scales and biases).
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


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

  The projection shortcut (1x1 conv, when stride or width changes) reads the
  *activated* input, as in the reference implementation: that way the only
  un-normalised path through the network is the identity one.

  Attributes:
    features: output channels.
    stride: stride of the first conv and of the projection shortcut.
  """

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """[B, H, W, C_in] -> [B, H / stride, W / stride, features]."""
    bn = functools.partial(batch_norm, train, self.axis_name, self.dtype)
    out = nn.relu(bn(name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, self.dtype, name="proj_conv")(out)
    else:
      shortcut = x
    out = conv(self.features, 3, self.stride, self.dtype, name="conv1")(out)
    out = nn.relu(bn(name="bn2")(out))
    out = conv(self.features, 3, 1, self.dtype, name="conv2")(out)
    return out + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for CIFAR-size inputs.

  Attributes:
    stage_sizes: blocks per stage, (2, 2, 2, 2) for PreAct-ResNet-18.
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
    """[B, H, W, C] pixels in [0, 1] -> float32 logits [B, num_classes]."""
    x = normalize(x, self.mean, self.std, self.dtype)
    x = conv(64, 3, 1, self.dtype, name="stem_conv")(x)
    x = residual_stages(
      x,
      PreActBlock,
      widths=[64 * 2**i for i in range(len(self.stage_sizes))],
      depths=self.stage_sizes,
      strides=[1] + [2] * (len(self.stage_sizes) - 1),
      train=train,
      dtype=self.dtype,
      axis_name=self.axis_name,
    )
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="final_bn")(x))
    return classifier_head(x, self.num_classes, self.dtype)


PreActResNet18 = functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2))
