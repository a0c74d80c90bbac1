"""ImageNet (TFDS ``imagenet2012``) read from its array_record files, lazily.

ImageNet does not fit in host memory (~140 GB of JPEGs), so its splits are
``ArraySplit``s whose ``images`` is a ``RecordImages``: a lazy [N, S, S, 3]
uint8 array over the prepared records. Indexing it with an index array gives
another lazy view (so the meta hold-out, long tail and label noise of
``transforms.make_train_and_meta`` apply unchanged: they only move indices
and labels); ``np.asarray`` of a view decodes it. Views decode for
evaluation: shorter side resized to ``S * 256 / 224``, centre ``S x S`` crop
(the standard ImageNet evaluation transform). Training batches do not come
from here but from ``caat_jax.streaming`` (grain worker processes), which
decodes the same records with ``random_resized_crop``.

JPEGs are decoded with Pillow (the records hold the original JPEG bytes; we
ask tfds not to decode, ``tfds.decode.SkipDecoding``), so no TensorFlow and
no OpenCV are needed. Labels are read once (a pass over the records' label
fields) and cached beside the dataset as ``caat_labels_<split>.npy``;
``python -m caat_jax.data.prepare --dataset=imagenet2012`` writes the cache
right after preparing.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import os
from typing import Any

import numpy as np
from absl import logging

from caat_jax.data import sources

TFDS_NAME = "imagenet2012"
SPLITS = ("train", "validation")  # raw train, and the 50,000-image test split
# Resize of the evaluation transform, relative to the crop: 256 -> 224.
EVAL_RESIZE_RATIO = 256 / 224
_DECODE_THREADS = 8  # Pillow releases the GIL while decoding


def open_source(split: str, data_dir: str | None) -> Any:
  """The split's records with undecoded images (JPEG bytes), labels as ints."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return sources.open_tfds_source(
    "imagenet2012", split, data_dir, decoders={"image": tfds.decode.SkipDecoding()}
  )


def _cache_path(source: Any, split: str) -> str | None:
  info = getattr(source, "dataset_info", None)
  data_dir = getattr(info, "data_dir", None)
  return os.path.join(os.fspath(data_dir), f"caat_labels_{split}.npy") if data_dir else None


def read_labels(source: Any, split: str, chunk: int = 1024) -> np.ndarray:
  """int32 [N]: every record's label, from the cache if there is one.

  The first call reads every record once (for ImageNet's train split, about
  as long as reading the dataset from disk) and writes the cache if the data
  dir is writable.
  """
  path = _cache_path(source, split)
  n = len(source)
  if path and os.path.exists(path):
    labels = np.load(path)
    if labels.shape == (n,):
      return labels.astype(np.int32)
    logging.warning("%s holds %s labels, the split %d; reading them again.", path, labels.shape, n)
  logging.info("Reading the labels of %d %s records (once; cached in %s).", n, split, path)
  labels = np.empty((n,), np.int32)
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    examples = getitems(keys) if getitems else [source[k] for k in keys]
    labels[start : start + len(keys)] = [int(ex["label"]) for ex in examples]
  if path:
    try:
      tmp = f"{path}.tmp{os.getpid()}.npy"
      np.save(tmp, labels)
      os.replace(tmp, path)
    except OSError as e:  # a read-only data dir: read them again next time
      logging.warning("Could not cache the labels in %s (%s).", path, e)
  return labels


# ----------------------------------------------------------------------------
# Decoding and the two crops.
# ----------------------------------------------------------------------------


def decode(jpeg: bytes) -> Any:
  """JPEG (or PNG: a few ImageNet files are) bytes -> an RGB PIL image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = Image.open(io.BytesIO(jpeg))
  return image.convert("RGB") if image.mode != "RGB" else image


def _resize(image: Any, size: tuple[int, int], box=None) -> Any:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  return image.resize(size, Image.Resampling.BILINEAR, box=box)


def center_crop(image: Any, size: int) -> np.ndarray:
  """Evaluation transform: shorter side to ``round(size * 256 / 224)``, centre
  ``size x size`` crop; uint8 [size, size, 3]."""
  w, h = image.size
  short = max(size, round(size * EVAL_RESIZE_RATIO))
  scale = short / min(w, h)
  rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
  image = _resize(image, (rw, rh))
  left, top = (rw - size) // 2, (rh - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def crop_box(
  width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (left, top, w, h): area fraction in
  ``scale``, aspect ratio log-uniform in ``ratio``, 10 tries, then the
  centre crop clamped to ``ratio``."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    w, h = round(height * ratio[1]), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop_flip(image: Any, size: int, rng: np.random.Generator) -> np.ndarray:
  """Training transform: random-resized crop to ``size x size``, horizontal
  flip with probability 1/2; uint8 [size, size, 3]."""
  left, top, w, h = crop_box(*image.size, rng)
  out = np.asarray(_resize(image, (size, size), box=(left, top, left + w, top + h)), np.uint8)
  return out[:, ::-1] if rng.random() < 0.5 else out


# ----------------------------------------------------------------------------
# Lazy images.
# ----------------------------------------------------------------------------


class RecordImages:
  """A lazy uint8 [N, S, S, 3] view of records ``index`` of a prepared split.

  ``images[i]`` (an int) decodes one image; ``images[index_array]`` and
  ``images[a:b]`` are views; ``np.asarray(images)`` decodes the view (the
  evaluation transform, in a thread pool). Pickles without its open source
  (each process, e.g. a grain worker, opens its own).
  """

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, split: str, data_dir: str | None, index: np.ndarray, size: int, source=None):
    self.split, self.data_dir, self.size = split, data_dir, size
    self.index = np.asarray(index, np.int64)
    self._source = source

  @property
  def source(self) -> Any:
    if self._source is None:
      self._source = open_source(self.split, self.data_dir)
    return self._source

  def __getstate__(self):
    return dict(self.__dict__, _source=None)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self.index), self.size, self.size, 3)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)):
      return center_crop(decode(self.read([self.index[key]])[0]), self.size)
    return RecordImages(self.split, self.data_dir, self.index[key], self.size, self._source)

  def read(self, records) -> list[bytes]:
    """The JPEG bytes of raw records ``records`` (ints)."""
    keys = [int(r) for r in records]
    getitems = getattr(self.source, "__getitems__", None)
    examples = getitems(keys) if getitems else [self.source[k] for k in keys]
    return [ex["image"] for ex in examples]

  def __array__(self, dtype=None, copy=None):
    del copy  # always a new array
    jpegs = self.read(self.index)
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
      images = list(pool.map(lambda b: center_crop(decode(b), self.size), jpegs))
    out = np.stack(images) if images else np.zeros(self.shape, np.uint8)
    return out if dtype is None else out.astype(dtype)


def load_splits(data_dir: str | None, image_size: int) -> tuple[tuple, tuple, int]:
  """((train RecordImages, labels), (validation RecordImages, labels), classes)."""
  out = []
  num_classes = 0
  for split in SPLITS:
    source = open_source(split, data_dir)
    labels = read_labels(source, split)
    info = getattr(source, "dataset_info", None)
    if info is not None:
      num_classes = int(info.features["label"].num_classes)
    images = RecordImages(split, data_dir, np.arange(len(labels)), image_size, source)
    out.append((images, labels))
  return out[0], out[1], num_classes or int(out[0][1].max()) + 1
