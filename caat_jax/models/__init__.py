"""Classifiers: small CNN, PreAct-ResNet-18, WRN-28-10 / 34-10, ResNet-50.

Every model is a Flax Linen module called as ``model.apply(variables, x,
train=...)`` with ``x`` a [B, H, W, C] float32 batch of pixels in [0, 1]; it
returns float32 logits [B, num_classes]. Mean/std normalisation is the first
thing each model does, so attack budgets (eps = 8/255) are in pixel space
(docs/method.md §1). ``dtype`` is the compute dtype (e.g. bfloat16); parameters,
BatchNorm statistics and logits stay float32. Variables are
``{'params': ..., 'batch_stats': ...}``; training applies take
``mutable=['batch_stats']``.

Why Linen rather than NNX: parameters are a plain pytree and ``model.apply`` is
a pure function of them. That is what the Meta-CAAT meta-gradient needs: it
differentiates, w.r.t. the weighting-net parameters Omega, a loss evaluated at
the one-step look-ahead ``W - eta * grad_W L(W, Omega)``, i.e. nested
``jax.grad`` through ``apply`` with ``W`` just another traced pytree. The same
pytrees go through ``pmap`` / ``shard_map`` and orbax checkpoints without any
split / merge of stateful objects. Linen's BatchNorm ``axis_name`` gives
cross-device batch statistics, so N devices match one device with the global
batch.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from caat_jax.models.names import module_order, select_modules
from caat_jax.models.preact_resnet import PreActResNet, PreActResNet18
from caat_jax.models.resnet import ResNet, ResNet50
from caat_jax.models.small_cnn import SmallCNN
from caat_jax.models.wide_resnet import WRN28_10, WRN34_10, WideResNet

_REGISTRY = {
  "small_cnn": SmallCNN,
  "preact_resnet18": PreActResNet18,
  "wrn28_10": WRN28_10,
  "wrn34_10": WRN34_10,
  "resnet50": ResNet50,
}
MODELS = tuple(_REGISTRY)


def get_model(
  name: str,
  *,
  num_classes: int,
  mean: Sequence[float],
  std: Sequence[float],
  dtype=jnp.float32,
  axis_name: str | None = None,
  **kwargs,
) -> nn.Module:
  """Builds a classifier by name.

  Args:
    name: one of ``MODELS``.
    num_classes: number of logits.
    mean, std: per-channel normalisation constants for pixels in [0, 1]
      (length C, or 1 to broadcast).
    dtype: compute dtype; parameters and logits stay float32.
    axis_name: the pmap / shard_map axis to average BatchNorm statistics over,
      or None on a single device.
    **kwargs: further module attributes, e.g. ``width`` of ``small_cnn``.

  Returns:
    An unbound Linen module; ``apply(variables, x, train)`` maps [B, H, W, C]
    pixels to float32 logits [B, num_classes].

  Raises:
    ValueError: for an unknown ``name``.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")
  # Tuples, not lists: module attributes must be hashable for jit static args.
  return _REGISTRY[name](
    num_classes=num_classes,
    mean=tuple(float(m) for m in mean),
    std=tuple(float(s) for s in std),
    dtype=dtype,
    axis_name=axis_name,
    **kwargs,
  )


__all__ = [
  "MODELS",
  "get_model",
  "module_order",
  "select_modules",
  "PreActResNet",
  "PreActResNet18",
  "ResNet",
  "ResNet50",
  "SmallCNN",
  "WideResNet",
  "WRN28_10",
  "WRN34_10",
]
