"""ImageNet ResNet-50 (v1.5) and the layers every model in this package shares.

ResNet-50 follows torchvision's ``resnet50`` (He et al. 2016, "Deep Residual
Learning", with the "v1.5" change of putting the stride-2 on the 3x3 conv of
the bottleneck rather than on the first 1x1): 7x7/2 stem, 3x3/2 max pool, four
stages of [3, 4, 6, 3] bottlenecks of widths 64, 128, 256, 512 (x4 expansion),
global average pool, dense. 25,557,032 parameters with 1000 classes, the same as
torchvision, so PyTorch checkpoints map one to one.

The shared pieces (``normalize``, ``conv``, ``batch_norm``, ``dense``) live here
so that every model in the package agrees on:

* normalisation inside the model, so attack budgets are in pixel space
  (SPEC section 1);
* PyTorch-compatible initialisation and padding, so results and checkpoints are
  comparable with the PyTorch adversarial-training literature;
* one BatchNorm convention (PyTorch momentum 0.1 == flax 0.9, cross-device
  statistics via ``axis_name``);
* float32 parameters and logits whatever the compute ``dtype``.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# PyTorch ResNets (torchvision, and the CIFAR ones in the adversarial-training
# code bases) use kaiming_normal_(mode='fan_out', nonlinearity='relu'): an
# untruncated normal with variance 2 / fan_out ('normal' is untruncated in jax;
# 'truncated_normal' is the other one).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's nn.Linear default, kaiming_uniform_(a=sqrt(5)), is U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in).
dense_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype: Dtype) -> jnp.ndarray:
  """Maps pixels in [0, 1] to the network's input space, ``(x - mean) / std``.

  Done in float32 and only then cast to the compute dtype, so that a bfloat16
  model sees the same inputs (up to rounding) as a float32 one.

  Args:
    x: [B, H, W, C] pixels.
    mean: per-channel means, length C (or 1, broadcast over channels).
    std: per-channel standard deviations, same length as ``mean``.
    dtype: compute dtype of the result.

  Returns:
    [B, H, W, C] normalised inputs in ``dtype``.
  """
  if len(mean) != len(std) or len(mean) not in (1, x.shape[-1]):
    raise ValueError(
        f'mean/std have lengths {len(mean)}/{len(std)}, expected 1 or the '
        f'number of input channels {x.shape[-1]} (input shape {x.shape}).')
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x.astype(jnp.float32) - mean) / std).astype(dtype)


def conv(features: int, kernel: int, stride: int, dtype: Dtype,
         name: str | None = None) -> nn.Conv:
  """Bias-free k x k conv with PyTorch padding ``k // 2`` on every side.

  Flax's 'SAME' pads asymmetrically for stride 2 on even sizes ((0, 1) rather
  than (1, 1)), which samples different pixels than PyTorch; explicit symmetric
  padding keeps ported weights and published numbers comparable. No bias: every
  conv here is followed (pre-activation: preceded) by BatchNorm.
  """
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
      param_dtype=jnp.float32, kernel_init=conv_kernel_init, name=name)


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype,
               name: str | None = None, **kwargs) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (momentum 0.1 == flax momentum 0.9).

  With ``axis_name`` set (under pmap / shard_map) batch statistics are averaged
  over that axis, so N devices behave like one device with the global batch.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name, dtype=dtype, param_dtype=jnp.float32, name=name,
      **kwargs)


def dense(features: int, dtype: Dtype, name: str | None = None) -> nn.Dense:
  """Classifier head: PyTorch nn.Linear initialisation, zero bias."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=dense_kernel_init, bias_init=nn.initializers.zeros,
      name=name)


def classifier_head(x: jnp.ndarray, num_classes: int, dtype: Dtype
                    ) -> jnp.ndarray:
  """Global average pool [B, H, W, C] -> [B, C], dense -> float32 [B, classes].

  Logits are returned in float32 whatever the compute dtype: losses, attack
  gradients and the meta-gradient are taken in float32.
  """
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  return dense(num_classes, dtype, name='head')(x).astype(jnp.float32)


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
      x = conv(out_features, 1, self.stride, self.dtype, name='proj_conv')(x)
      x = bn(name='proj_bn')(x)
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
    x = conv(64, 7, 2, self.dtype, name='stem_conv')(x)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype,
                           name='stem_bn')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(64 * 2**i, stride, self.dtype, self.axis_name,
                       name=f'stage{i + 1}_block{j + 1}')(x, train)
    return classifier_head(x, self.num_classes, self.dtype)


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
