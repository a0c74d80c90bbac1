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

import contextlib
import contextvars
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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


# --- how a conv is computed ----------------------------------------------------

CONV_IMPLS = ("auto", "xla", "matmul")
_CONV_IMPL = contextvars.ContextVar("caat_jax_conv_impl", default="xla")


def resolve_conv_impl(impl: str) -> str:
  """``'auto'``: ``'matmul'`` on a CPU, ``'xla'`` on an accelerator."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  return impl


@contextlib.contextmanager
def conv_impl(impl: str):
  """Within this context, tracing a model computes every :func:`conv` as
  ``impl`` (:func:`resolve_conv_impl`): ``'xla'``, the backend's
  convolution (the default), or ``'matmul'``, :func:`matmul_conv`. The
  parameters and the function computed are the same; only the program
  differs (the results up to float rounding)."""
  token = _CONV_IMPL.set(resolve_conv_impl(impl))
  try:
    yield
  finally:
    _CONV_IMPL.reset(token)


def traced_with_conv_impl(fn: Callable, impl: str = "auto") -> Callable:
  """``fn`` whose every trace computes the model's convs as ``impl``: the
  context is entered inside the function, so it holds whenever ``jit``,
  ``pmap`` or ``shard_map`` traces it, whoever calls it.

  Why: XLA:CPU runs a convolution inside a loop (``lax.scan`` /
  ``fori_loop`` / ``while_loop``, as APGD, FAB and Square iterate) 2-7x
  slower than the same convolution outside one, while a dot is as fast in a
  loop as outside. On 2 CPU cores, 100 input-gradient steps of the digits
  small CNN (batch 256) in a ``fori_loop``: 4.3 s with the backend's
  convolution, 1.4 s with :func:`matmul_conv` (PyTorch on 1 thread: 2.0 s).
  Outside loops the backend's convolution is as fast or faster, so
  training keeps it."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with conv_impl(impl):
      return fn(*args, **kwargs)

  return wrapped


def matmul_conv(lhs, rhs, window_strides, padding, *, dimension_numbers, precision=None):
  """A 2-D convolution, NHWC input and HWIO kernel with explicit padding,
  as one matrix product: the ``kh * kw`` shifted (strided) views of the
  padded input concatenated along channels (im2col, in (i, j, c) order, the
  kernel's own row-major order), times the kernel reshaped to
  [kh * kw * C_in, C_out]."""
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if dimension_numbers != expected:
    raise ValueError(f"matmul_conv takes NHWC / HWIO / NHWC only, got {dimension_numbers}")
  kh, kw, cin, cout = rhs.shape
  (sh, sw), (ph, pw) = window_strides, padding
  x = jnp.pad(lhs, ((0, 0), tuple(ph), tuple(pw), (0, 0)))
  b, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  views = [
    lax.slice(
      x, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin), (1, sh, sw, 1)
    )
    for i in range(kh)
    for j in range(kw)
  ]
  cols = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.dot(cols, rhs.reshape(kh * kw * cin, cout), precision=precision)


def _conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """What :func:`conv`'s ``nn.Conv`` calls: ``lax.conv_general_dilated``
  (the same program as a plain ``nn.Conv``), or :func:`matmul_conv` inside
  ``conv_impl('matmul')``."""
  plain = (lhs_dilation in (None, (1, 1))) and (rhs_dilation in (None, (1, 1)))
  if _CONV_IMPL.get() == "matmul" and plain and feature_group_count == 1 and not kwargs:
    return matmul_conv(
      lhs, rhs, window_strides, padding, dimension_numbers=dimension_numbers, precision=precision
    )
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )


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
    conv_general_dilated=_conv_general_dilated,
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
