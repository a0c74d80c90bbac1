"""The layers every model in this package shares, and the residual stage loop.

So that every model agrees on:

* normalisation inside the model, so attack budgets are in pixel space
  (docs/method.md §1);
* PyTorch-compatible initialisation and padding, so results and checkpoints are
  comparable with the PyTorch adversarial-training literature;
* one BatchNorm convention (PyTorch momentum 0.1 == flax 0.9, cross-device
  statistics via ``axis_name``);
* float32 parameters and logits whatever the compute ``dtype``.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# PyTorch ResNets (torchvision, and the CIFAR ones in the adversarial-training
# code bases) use kaiming_normal_(mode='fan_out', nonlinearity='relu'): an
# untruncated normal with variance 2 / fan_out ('normal' is untruncated in jax;
# 'truncated_normal' is the other one).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default, kaiming_uniform_(a=sqrt(5)), is U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def normalize(
  x: jnp.ndarray, mean: Sequence[float], std: Sequence[float], dtype: Dtype
) -> jnp.ndarray:
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
      f"mean/std have lengths {len(mean)}/{len(std)}, expected 1 or the "
      f"number of input channels {x.shape[-1]} (input shape {x.shape})."
    )
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x.astype(jnp.float32) - mean) / std).astype(dtype)


def conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str | None = None) -> nn.Conv:
  """Bias-free k x k conv with PyTorch padding ``k // 2`` on every side.

  Flax's 'SAME' pads asymmetrically for stride 2 on even sizes ((0, 1) rather
  than (1, 1)), which samples different pixels than PyTorch; explicit symmetric
  padding keeps ported weights and published numbers comparable. No bias: every
  conv here is followed (pre-activation: preceded) by BatchNorm.
  """
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=conv_kernel_init,
    name=name,
  )


def batch_norm(
  train: bool, axis_name: str | None, dtype: Dtype, name: str | None = None, **kwargs
) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (momentum 0.1 == flax momentum 0.9).

  With ``axis_name`` set (under pmap / shard_map) batch statistics are averaged
  over that axis, so N devices behave like one device with the global batch.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    **kwargs,
  )


def dense(features: int, dtype: Dtype, name: str | None = None) -> nn.Dense:
  """Classifier head: PyTorch nn.Linear initialisation, zero bias."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=dense_kernel_init,
    bias_init=nn.initializers.zeros,
    name=name,
  )


def classifier_head(x: jnp.ndarray, num_classes: int, dtype: Dtype) -> jnp.ndarray:
  """Global average pool [B, H, W, C] -> [B, C], dense -> float32 [B, classes].

  Logits are returned in float32 whatever the compute dtype: losses, attack
  gradients and the meta-gradient are taken in float32.
  """
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  return dense(num_classes, dtype, name="head")(x).astype(jnp.float32)


def residual_stages(
  x: jnp.ndarray,
  block,
  *,
  widths: Sequence[int],
  depths: Sequence[int],
  strides: Sequence[int],
  train: bool,
  dtype: Dtype,
  axis_name: str | None,
) -> jnp.ndarray:
  """The stage loop of every ResNet here: stage i has ``depths[i]`` blocks of
  ``widths[i]`` channels, its first block strided by ``strides[i]``.

  ``block(width, stride, dtype, axis_name, name=...)`` is the block module
  class; blocks are named ``stage<i>_block<j>`` (1-based), the parameter
  names of every checkpoint. Call from inside a ``nn.compact`` method.
  """
  for i, (width, depth, stride) in enumerate(zip(widths, depths, strides)):
    for j in range(depth):
      x = block(
        width, stride if j == 0 else 1, dtype, axis_name, name=f"stage{i + 1}_block{j + 1}"
      )(x, train)
  return x
