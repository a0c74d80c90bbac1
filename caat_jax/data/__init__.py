"""Datasets for caat_jax: sources, label-noise / long-tail transforms, augment.

`load_dataset(config.data)` returns a `Dataset` of three in-memory splits:

  train: the training split the method sees (long-tailed and/or noisy labels,
         with the clean labels kept alongside);
  meta:  a clean class-balanced hold-out of the raw train split, taken before
         any noise or imbalance (Meta-CAAT's meta set, FRL's validation set);
  test:  the untouched test split.

Images stay in their stored dtype (uint8 for TFDS, float32 in [0, 1] for
digits); they are scaled to [0, 1] float32 on device, and mean/std
normalisation happens inside the model (docs/method.md §1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from absl import logging

from caat_jax import checks
from caat_jax.data import imagenet, sources, transforms
from caat_jax.data.augment import AUGMENTATIONS, augment_fn, random_crop_flip
from caat_jax.data.sources import DatasetNotFoundError
from caat_jax.data.transforms import NOISE_TYPES, ArraySplit, noise_transition_matrix

__all__ = [
  "ArraySplit",
  "Dataset",
  "load_dataset",
  "DatasetNotFoundError",
  "random_crop_flip",
  "augment_fn",
  "noise_transition_matrix",
  "DATASETS",
  "AUGMENTATIONS",
  "NOISE_TYPES",
]

DATASETS = ("digits", "cifar10", "svhn", "imagenet2012")
# Names people try for a dataset that has another name here.
_RENAMED = {"imagenet": "imagenet2012"}


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Static facts about a dataset."""

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...] | None  # None: computed from the raw train images.
  std: tuple[float, ...] | None
  augment: str


_DATASETS = {
  "digits": _Spec(10, (8, 8, 1), None, None, "none"),
  "cifar10": _Spec(
    10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "crop_flip"
  ),
  # No flip for SVHN: mirrored digits are not digits.
  "svhn": _Spec(10, (32, 32, 3), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "none"),
  # Streamed (caat_jax.streaming): random-resized crop and flip on the host,
  # so nothing on device. The shape is at data.image_size (224 here).
  "imagenet2012": _Spec(1000, (224, 224, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "none"),
}
# Keys only the streamed datasets read, with their defaults.
STREAM_KEYS = {"image_size": 224, "num_workers": 8, "prefetch": 2}


def spec(name: str) -> _Spec:
  """Static facts (classes, image shape, augmentation) of dataset ``name``."""
  if name not in _DATASETS:
    raise ValueError(f"data.name={name!r}; valid: {', '.join(DATASETS)}")
  return _DATASETS[name]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An in-memory classification dataset with train / meta / test splits.

  Attributes:
    name: one of `DATASETS`.
    num_classes: C.
    image_shape: (H, W, C).
    train: training split; `labels` possibly noisy, `clean_labels` not.
    meta: clean, class-balanced hold-out, disjoint from `train`.
    test: untouched test split.
    mean: per-channel pixel mean in [0, 1] units, used inside the model.
    std: per-channel pixel std in [0, 1] units, used inside the model.
    augment: on-device augmentation for training, see `augment_fn`.
    noise_transition: float [C, C], the transition matrix noise was drawn from
      (identity without noise).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train: ArraySplit
  meta: ArraySplit
  test: ArraySplit
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str
  noise_transition: np.ndarray | None = None

  @property
  def class_counts(self) -> np.ndarray:
    """int64 [C]: training examples per (possibly noisy) label, i.e. the N_y
    behind the class-proportion feature N_y / N (docs/method.md §3)."""
    return np.bincount(self.train.labels, minlength=self.num_classes)


# ----------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------

_KEYS = (
  "name",
  "data_dir",
  "meta_per_class",
  "noise_type",
  "noise_rate",
  "drop_corrupted",
  "meta_in_train",
  "imbalance_factor",
  "test_fraction",
  "seed",
)


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return (
    isinstance(x, (int, float, np.integer, np.floating))
    and not isinstance(x, bool)
    and math.isfinite(x)
  )


def has_label_noise(cfg: Any) -> bool:
  """Whether the data config corrupts any training label (a noise type and a
  rate > 0): what the switches that act on corrupted samples need."""
  return cfg["noise_type"] != "none" and cfg["noise_rate"] > 0


def validate_config(cfg: Any) -> None:
  """Raises ``checks.ConfigError`` naming `config.data.<key>` for a missing or
  invalid value."""

  def ok(key, good, expected):
    checks.check(f"data.{key}", good, cfg[key], expected)

  for key in _KEYS:
    if key not in cfg:
      raise checks.ConfigError(
        f"config.data.{key} is missing from the data config (expected keys: {', '.join(_KEYS)})."
      )
  if cfg["name"] in _RENAMED:
    raise checks.ConfigError(
      f"config.data.name={cfg['name']!r}: the dataset is called {_RENAMED[cfg['name']]!r} "
      f"(TFDS's name); valid: {', '.join(DATASETS)}."
    )
  checks.choice("data.name", cfg["name"], DATASETS)
  ok(
    "data_dir",
    cfg["data_dir"] is None or isinstance(cfg["data_dir"], str),
    "a path string or None (TFDS default)",
  )
  ok("meta_per_class", _is_int(cfg["meta_per_class"]) and cfg["meta_per_class"] >= 0, "an int >= 0")
  checks.choice("data.noise_type", cfg["noise_type"], NOISE_TYPES)
  ok("noise_rate", _is_real(cfg["noise_rate"]) and 0 <= cfg["noise_rate"] < 1, "in [0, 1)")
  ok("drop_corrupted", isinstance(cfg["drop_corrupted"], (bool, np.bool_)), "True or False")
  ok("meta_in_train", isinstance(cfg["meta_in_train"], (bool, np.bool_)), "True or False")
  if cfg["meta_in_train"] and cfg["meta_per_class"] == 0:
    raise checks.ConfigError(
      "config.data.meta_in_train=True adds nothing with config.data.meta_per_class=0 "
      "(an empty meta set); set meta_per_class > 0 or meta_in_train=False."
    )
  if cfg["meta_in_train"] and cfg["name"] == "imagenet2012":
    raise checks.ConfigError(
      "config.data.meta_in_train=True is for the in-memory datasets; imagenet2012 streams "
      f"its training split; valid with it: False (datasets that take True: "
      f"{', '.join(d for d in DATASETS if d != 'imagenet2012')})."
    )
  if cfg["noise_type"] == "none" and cfg["noise_rate"] > 0:
    raise checks.ConfigError(
      f"config.data.noise_rate={cfg['noise_rate']!r} corrupts no label with "
      f"config.data.noise_type='none'; choose a noise_type ({', '.join(NOISE_TYPES[1:])}) "
      f"or set noise_rate=0."
    )
  if cfg["drop_corrupted"] and not has_label_noise(cfg):
    raise checks.ConfigError(
      f"config.data.drop_corrupted=True drops the examples whose label noise changed, "
      f"but config.data.noise_rate={cfg['noise_rate']!r} with config.data.noise_type="
      f"{cfg['noise_type']!r} changes none; set noise_rate > 0 and a noise_type, or "
      f"drop_corrupted=False."
    )
  ok(
    "imbalance_factor",
    _is_real(cfg["imbalance_factor"]) and cfg["imbalance_factor"] >= 1,
    ">= 1 (1 = balanced)",
  )
  ok("test_fraction", _is_real(cfg["test_fraction"]) and 0 < cfg["test_fraction"] < 1, "in (0, 1)")
  ok("seed", _is_int(cfg["seed"]), "an int")
  for key, low, what in (("image_size", 8, "pixels"), ("num_workers", 0, ""), ("prefetch", 1, "")):
    value = stream_setting(cfg, key)
    checks.check(
      f"data.{key}", _is_int(value) and value >= low, value, f"an int >= {low} {what}".strip()
    )


def stream_setting(cfg: Any, key: str) -> Any:
  """``config.data.<key>`` of ``STREAM_KEYS``, its default where the config lacks it."""
  return cfg[key] if key in cfg else STREAM_KEYS[key]


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------


def _load_raw(cfg: Any) -> tuple[ArraySplit, ArraySplit, int]:
  """(raw train, test) clean splits of the configured dataset, and its class
  count (0: the spec's)."""
  num_classes = 0
  if cfg["name"] == "digits":
    train, test = sources.load_digits(cfg["test_fraction"])
  elif cfg["name"] == "imagenet2012":  # lazy images (data.imagenet)
    size = stream_setting(cfg, "image_size")
    train, test, num_classes = imagenet.load_splits(cfg["data_dir"], size)
  else:
    train_split, test_split = sources.TFDS_SPLITS[cfg["name"]]
    train = sources.load_tfds_split(cfg["name"], train_split, cfg["data_dir"])
    test = sources.load_tfds_split(cfg["name"], test_split, cfg["data_dir"])
  return transforms.clean_split(*train), transforms.clean_split(*test), num_classes


def _pixel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of [N, H, W, C] images in [0, 1] units."""
  x = images.astype(np.float64)
  if images.dtype == np.uint8:
    x /= 255.0
  return (
    tuple(float(m) for m in x.mean(axis=(0, 1, 2))),
    tuple(float(s) for s in x.std(axis=(0, 1, 2))),
  )


def load_dataset(cfg: Any) -> Dataset:
  """Loads and transforms the dataset described by `config.data`.

  Order: raw train -> clean balanced meta hold-out (`meta_per_class`) ->
  long tail (`imbalance_factor`) -> label noise (`noise_type`,
  `noise_rate`) -> with `drop_corrupted`, the examples whose label the noise
  changed are removed (an oracle) -> with `meta_in_train`, the meta examples
  are appended to training (a control); all of it deterministic in `seed`. The
  test split is never modified.

  Args:
    cfg: the `config.data` ConfigDict (or a mapping) with keys name, data_dir,
      meta_per_class, noise_type, noise_rate, drop_corrupted, meta_in_train,
      imbalance_factor, test_fraction, seed.

  Returns:
    The `Dataset`.

  Raises:
    ValueError: a config value is invalid (the message names the key).
    DatasetNotFoundError: a TFDS dataset is not prepared; the message holds
      the command that prepares it.
  """
  validate_config(cfg)
  name = cfg["name"]
  spec = _DATASETS[name]
  raw_train, test, num_classes = _load_raw(cfg)
  if isinstance(raw_train.images, imagenet.RecordImages):  # its size and classes, as prepared
    size = raw_train.images.size
    spec = dataclasses.replace(spec, image_shape=(size, size, 3), num_classes=num_classes)
  if raw_train.images.shape[1:] != spec.image_shape:
    raise ValueError(
      f"{name}: images have shape {raw_train.images.shape[1:]}, expected {spec.image_shape}."
    )
  train, meta, transition = transforms.make_train_and_meta(
    raw_train,
    num_classes=spec.num_classes,
    meta_per_class=cfg["meta_per_class"],
    imbalance_factor=cfg["imbalance_factor"],
    noise_type=cfg["noise_type"],
    noise_rate=cfg["noise_rate"],
    seed=cfg["seed"],
  )
  if cfg["drop_corrupted"]:  # the oracle: train on the clean-label examples only
    logging.info(
      "data.drop_corrupted: dropping %d of %d training examples (their labels were corrupted).",
      int(train.corrupted.sum()),
      len(train),
    )
    train = train.take(np.flatnonzero(~train.corrupted))
  if cfg["meta_in_train"]:  # the control: the clean meta examples trained on too
    logging.info("data.meta_in_train: appending the %d meta examples to training.", len(meta))
    train = transforms.concat(train, meta)
  if spec.mean is None:
    mean, std = _pixel_stats(raw_train.images)
  else:
    mean, std = spec.mean, spec.std
  logging.info(
    "%s: train %d (%.1f%% labels corrupted), meta %d, test %d; train class counts %s.",
    name,
    len(train),
    100 * float(train.corrupted.mean()) if len(train) else 0.0,
    len(meta),
    len(test),
    np.bincount(train.labels, minlength=spec.num_classes),
  )
  return Dataset(
    name=name,
    num_classes=spec.num_classes,
    image_shape=spec.image_shape,
    train=train,
    meta=meta,
    test=test,
    mean=mean,
    std=std,
    augment=spec.augment,
    noise_transition=transition,
  )
