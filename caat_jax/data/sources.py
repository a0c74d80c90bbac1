"""Raw data sources: scikit-learn's bundled digits and prepared TFDS datasets.

Every source returns plain numpy arrays `(images [N,H,W,C], labels int32 [N])`
for a whole split. TFDS datasets are read through `tfds.data_source` from
array_record files, which needs no TensorFlow; only *preparing* them does
(`python -m caat_jax.data.prepare`, the `prepare` extra).

CIFAR-10 and SVHN fit in host memory (150 MB / 220 MB as uint8), so they are
loaded whole. ImageNet does not: `caat_jax.data.imagenet` opens the same
sources lazily, and `caat_jax.streaming` streams its training batches.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

# Our dataset name -> TFDS builder name.
TFDS_NAMES = {"cifar10": "cifar10", "svhn": "svhn_cropped", "imagenet2012": "imagenet2012"}
# TFDS split names of the raw train / test splits.
TFDS_SPLITS = {"cifar10": ("train", "test"), "svhn": ("train", "test")}

# Records per `__getitems__` call: large enough to amortise the call, small
# enough that one chunk of decoded examples stays a few MB.
_READ_CHUNK = 2048


class DatasetNotFoundError(FileNotFoundError):
  """A TFDS dataset is not prepared in the data dir; the message says how."""


class DatasetUnreadableError(DatasetNotFoundError):
  """A prepared TFDS dataset cannot be read (corrupt or incomplete files).

  A kind of DatasetNotFoundError: the remedy is the same, prepare it again.
  """


def default_data_dir() -> str:
  """TFDS's default data dir (`$TFDS_DATA_DIR` or ~/tensorflow_datasets)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return os.fspath(tfds.core.constants.get_default_data_dir())


def prepare_command(dataset: str, data_dir: str | None) -> str:
  """The shell command that prepares `dataset` into `data_dir`."""
  data_dir = data_dir or default_data_dir()
  return f"python -m caat_jax.data.prepare --dataset={dataset} --data_dir={data_dir}"


# ----------------------------------------------------------------------------
# Digits (offline default).
# ----------------------------------------------------------------------------

# The test split is drawn with this fixed seed, independent of the run seed,
# so every run (and every seed of a sweep) evaluates on the same examples.
DIGITS_TEST_SEED = 0


def load_digits(
  test_fraction: float,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's 8x8 digits, split into stratified train / test.

  Args:
    test_fraction: fraction of the 1797 examples in the test split, (0, 1).

  Returns:
    ((train_images, train_labels), (test_images, test_labels)); images float32
    [N, 8, 8, 1] in [0, 1] (raw pixels are 0..16), labels int32 [N].
  """
  # Imported here: sklearn is slow to import and only the digits need it.
  from sklearn import (
    datasets,  # pylint: disable=g-import-not-at-top
    model_selection,  # pylint: disable=g-import-not-at-top
  )

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
    np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=DIGITS_TEST_SEED
  )
  # Sorted so the raw splits keep sklearn's order, whatever the split does.
  train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
  return ((images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx]))


# ----------------------------------------------------------------------------
# TFDS (array_record, no TensorFlow).
# ----------------------------------------------------------------------------


def _tfds_builder(tfds_name: str, data_dir: str | None) -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")


def _not_found(dataset: str, data_dir: str | None, why: str) -> DatasetNotFoundError:
  tfds_name = TFDS_NAMES[dataset]
  where = data_dir or default_data_dir()
  return DatasetNotFoundError(
    f"TFDS dataset {tfds_name!r} ({dataset}) {why} in data_dir {where!r}. "
    f"Prepare it once (needs TensorFlow: pip install 'caat_jax[prepare]') "
    f"with:\n  {prepare_command(dataset, data_dir)}\n"
    f"then pass --config.data.data_dir={where}"
  )


def _one_line(err: BaseException, limit: int = 200) -> str:
  text = " ".join(str(err).split())
  return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _unreadable(
  dataset: str, data_dir: str | None, split: str, err: BaseException
) -> DatasetUnreadableError:
  where = data_dir or default_data_dir()
  directory = os.path.join(where, TFDS_NAMES[dataset])
  return DatasetUnreadableError(
    f"TFDS dataset {TFDS_NAMES[dataset]!r} ({dataset}, split {split!r}) in "
    f"{directory} cannot be read ({_one_line(err)}); its prepared files look "
    f"corrupt or incomplete. Move {directory} away and prepare it again with:\n"
    f"  {prepare_command(dataset, data_dir)}"
  )


def open_tfds_source(dataset: str, split: str, data_dir: str | None, decoders: Any = None) -> Any:
  """Opens one split of a prepared TFDS dataset as a random-access source.

  Args:
    dataset: our name, a key of `TFDS_NAMES`.
    split: TFDS split name, e.g. 'train'.
    data_dir: TFDS data dir, None for TFDS's default.
    decoders: tfds decoders, e.g. `{'image': tfds.decode.SkipDecoding()}`
      for the encoded bytes.

  Returns:
    A sequence-like source (`len`, `[i]`, usually `__getitems__`) of example
    dicts with 'image' uint8 [H, W, C] and 'label' int.

  Raises:
    DatasetNotFoundError: the dataset is not prepared (as array_record) there.
    DatasetUnreadableError: it is, but its files cannot be read.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds_name = TFDS_NAMES[dataset]
  try:
    return tfds.data_source(
      tfds_name,
      split=split,
      data_dir=data_dir,
      download=False,
      decoders=decoders,
      builder_kwargs={"file_format": "array_record"},
    )
  except Exception as e:  # pylint: disable=broad-exception-caught
    # tfds reports a missing dataset in several ways (a KeyError for empty
    # splits, an AssertionError or FileNotFoundError elsewhere). Ask the
    # builder, which only looks at the data dir, whether that is the cause;
    # anything else with a prepared dataset means its files are damaged
    # (unparsable dataset_info.json, missing or corrupt record files).
    try:
      builder = _tfds_builder(tfds_name, data_dir)
      prepared = builder.is_prepared()
      splits = list(builder.info.splits) if prepared else []
    except Exception as e2:  # pylint: disable=broad-exception-caught
      raise _unreadable(dataset, data_dir, split, e2) from e
    if not prepared:
      raise _not_found(dataset, data_dir, "is not prepared") from e
    if split not in splits:
      raise _not_found(dataset, data_dir, f"has no split {split!r} (found {splits})") from e
    raise _unreadable(dataset, data_dir, split, e) from e


def read_all(source: Any, chunk: int = _READ_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole random-access source of image/label dicts into arrays.

  Args:
    source: `len(source)` examples with keys 'image' [H, W, C] and 'label'.
    chunk: records per batched read.

  Returns:
    (images uint8 [N, H, W, C], labels int32 [N]).
  """
  n = len(source)
  images, labels = None, np.empty((n,), np.int32)
  batched = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    # Batched reads let array_record fetch records in parallel; plain
    # sequences (and fakes in tests) fall back to one record at a time.
    examples = batched(keys) if batched else [source[k] for k in keys]
    for k, ex in zip(keys, examples):
      image = np.asarray(ex["image"])
      if images is None:
        images = np.empty((n,) + image.shape, image.dtype)
      images[k] = image
      labels[k] = ex["label"]
  if images is None:
    raise ValueError("Empty TFDS split.")
  return images, labels


def load_tfds_split(
  dataset: str, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
  """One whole split of a prepared TFDS dataset as numpy arrays.

  Args:
    dataset: 'cifar10' or 'svhn'.
    split: TFDS split name.
    data_dir: TFDS data dir (None: TFDS default).

  Returns:
    (images uint8 [N, 32, 32, 3], labels int32 [N]).

  Raises:
    DatasetNotFoundError: the dataset is not prepared there.
    DatasetUnreadableError: its files are corrupt (or too short).
  """
  start = time.time()
  source = open_tfds_source(dataset, split, data_dir)
  try:
    images, labels = read_all(source)
  except Exception as e:  # pylint: disable=broad-exception-caught
    # array_record reports damage as RuntimeError ("Corrupted Riegeli/records
    # file", "open() failed"), a short file as a failed read.
    raise _unreadable(dataset, data_dir, split, e) from e
  logging.info(
    "Read %s/%s: %d examples %s in %.1fs.",
    dataset,
    split,
    len(labels),
    images.shape[1:],
    time.time() - start,
  )
  return images, labels
