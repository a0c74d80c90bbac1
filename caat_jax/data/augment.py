"""On-device data augmentation, pure JAX (runs inside the jitted train step).

Each example is augmented from its own PRNG key, so the result for an example
does not depend on its batch position or on how the batch is split across
devices: callers derive per-example keys (e.g. `fold_in` of the example's
global index) and pass them in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
AUGMENTATIONS = ("none", "crop", "crop_flip")


def _crop_flip_one(image: jax.Array, key: jax.Array, pad: int, flip: bool) -> jax.Array:
  """[H, W, C] -> [H, W, C]: one example's pad-crop (and maybe flip)."""
  h, w, c = image.shape
  crop_key, flip_key = jax.random.split(key)
  # Offsets in [0, 2 * pad]: offset `pad` is the un-shifted image.
  offsets = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (h, w, c))
  if flip:
    out = jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out)
  return out


def random_crop_flip(
  images: jax.Array, keys: jax.Array, *, pad: int = 4, flip: bool = True
) -> jax.Array:
  """Zero-pads by `pad`, crops back to HxW at a random offset, flips w.p. 1/2.

  The standard CIFAR augmentation (He et al. 2016), per example.

  Args:
    images: [B, H, W, C] float images.
    keys: [B] PRNG keys (a typed `jax.random.key` array; raw uint32 keys of
      shape [B, 2] also work), one per example.
    pad: zero padding on each side, the maximal shift in pixels.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    [B, H, W, C] augmented images, same dtype.
  """
  return jax.vmap(functools.partial(_crop_flip_one, pad=pad, flip=flip))(images, keys)


def _identity(images: jax.Array, keys: jax.Array) -> jax.Array:
  del keys  # The identity needs no randomness.
  return images


def augment_fn(kind: str) -> AugmentFn:
  """Returns `(images [B,H,W,C], keys [B]) -> images [B,H,W,C]`.

  Args:
    kind: 'none' (identity), 'crop' (pad-4 random crop) or 'crop_flip'
      (pad-4 random crop + horizontal flip).
  """
  if kind == "none":
    return _identity
  if kind == "crop":
    return functools.partial(random_crop_flip, pad=4, flip=False)
  if kind == "crop_flip":
    return functools.partial(random_crop_flip, pad=4, flip=True)
  raise ValueError(f"Unknown augmentation {kind!r}, expected one of {AUGMENTATIONS}.")


def to_float01(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float images pass through as float32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)
