"""Host-side dataset transforms: meta hold-out, long tail, label noise.

All transforms are pure numpy functions of their inputs and an explicit
`np.random.Generator`, so a run's data is a deterministic function of its seed.
`make_train_and_meta` applies them in the order the paper's experiments need:

  raw train -> clean balanced meta hold-out -> long-tail subsampling -> noise.

The meta set is drawn first so it stays clean and balanced whatever noise or
imbalance is applied to the training split afterwards (docs/method.md §5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

NOISE_TYPES = ("none", "uniform", "pairflip", "flip2")

# Independent random streams, one per transform: changing e.g. the noise rate
# must not change which examples end up in the meta set.
_STREAM_META = 0
_STREAM_LONG_TAIL = 1
_STREAM_NOISE_MATRIX = 2
_STREAM_NOISE_DRAW = 3


class DataConfigError(ValueError):
  """A data config value that does not fit the data actually loaded."""


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split of an in-memory image classification dataset.

  Attributes:
    images: [N, H, W, C]; uint8 in 0..255 for TFDS data, float32 in [0, 1] for
      the bundled digits.
    labels: int32 [N], the labels training sees (possibly noisy).
    clean_labels: int32 [N], the labels before noise injection.
    source_index: int32 [N], index of each example in the raw split it came
      from (provenance: lets tests and analyses check disjointness).
  """

  images: np.ndarray
  labels: np.ndarray
  clean_labels: np.ndarray
  source_index: np.ndarray

  def __post_init__(self):
    n = len(self.images)
    for name in ("labels", "clean_labels", "source_index"):
      if getattr(self, name).shape != (n,):
        raise ValueError(
          f"ArraySplit.{name} has shape {getattr(self, name).shape}, "
          f"expected ({n},) to match images {self.images.shape}."
        )

  @property
  def corrupted(self) -> np.ndarray:
    """bool [N]: which training labels noise injection changed."""
    return self.labels != self.clean_labels

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, index: np.ndarray) -> ArraySplit:
    """Returns the examples at `index` (int [M]) as a new split."""
    return ArraySplit(
      images=self.images[index],
      labels=self.labels[index],
      clean_labels=self.clean_labels[index],
      source_index=self.source_index[index],
    )


def concat(a: ArraySplit, b: ArraySplit) -> ArraySplit:
  """The examples of ``a`` then those of ``b`` (in-memory images only)."""
  return ArraySplit(
    images=np.concatenate([a.images, b.images]),
    labels=np.concatenate([a.labels, b.labels]),
    clean_labels=np.concatenate([a.clean_labels, b.clean_labels]),
    source_index=np.concatenate([a.source_index, b.source_index]),
  )


def clean_split(images: np.ndarray, labels: np.ndarray) -> ArraySplit:
  """Wraps raw arrays (images [N,...], labels [N]) as an uncorrupted split."""
  labels = np.asarray(labels, np.int32)
  return ArraySplit(
    images=images,
    labels=labels,
    clean_labels=labels.copy(),
    source_index=np.arange(len(labels), dtype=np.int32),
  )


def stream_rng(seed: int, stream: int) -> np.random.Generator:
  """A generator for one purpose (`stream`) derived from the run's seed."""
  return np.random.default_rng([seed, stream])


# ----------------------------------------------------------------------------
# Meta hold-out.
# ----------------------------------------------------------------------------


def meta_split_indices(
  labels: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Picks a class-balanced hold-out of `per_class` examples per class.

  Args:
    labels: int [N] clean labels of the raw training split.
    per_class: examples per class to hold out (0 gives an empty meta set).
    num_classes: C.
    rng: randomness for which examples are held out.

  Returns:
    (meta_index [C * per_class], rest_index [N - C * per_class]), both sorted,
    disjoint, and together a partition of range(N).

  Raises:
    DataConfigError: a class has fewer than `per_class` examples.
  """
  counts = np.bincount(labels, minlength=num_classes)[:num_classes]
  if num_classes and per_class > counts.min():
    c = int(np.argmin(counts))
    raise DataConfigError(
      f"data.meta_per_class={per_class} is more than class {c} has: "
      f"{counts[c]} training examples (the smallest class). Use "
      f"data.meta_per_class <= {counts[c]}."
    )
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    chosen.append(rng.choice(members, size=per_class, replace=False))
  meta = np.sort(np.concatenate(chosen)).astype(np.int64)
  rest = np.setdiff1d(np.arange(len(labels)), meta, assume_unique=True)
  return meta, rest


# ----------------------------------------------------------------------------
# Long-tailed subsampling (Cui et al., CVPR 2019).
# ----------------------------------------------------------------------------


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
  """Per-class sizes `n_c = floor(n_max * IF^(-c/(C-1)))`, class 0 the head.

  Args:
    n_max: size of the head class.
    num_classes: C >= 2.
    imbalance_factor: IF >= 1, the ratio of head to tail size.

  Returns:
    int64 [C], non-increasing, `n_0 = n_max`, `n_{C-1} = floor(n_max / IF)`.
  """
  c = np.arange(num_classes)
  return np.floor(n_max * imbalance_factor ** (-c / (num_classes - 1))).astype(np.int64)


def long_tail_indices(
  labels: np.ndarray, num_classes: int, imbalance_factor: float, rng: np.random.Generator
) -> np.ndarray:
  """Subsamples a (roughly balanced) split to a long-tailed one.

  `n_max` is the size of the largest class in `labels`. A class with fewer
  examples than its target (possible on SVHN, which is not balanced) keeps all
  of them.

  Args:
    labels: int [N] labels to subsample.
    num_classes: C.
    imbalance_factor: IF >= 1; 1 keeps everything.
    rng: randomness for which examples are kept.

  Returns:
    Sorted int64 indices into `labels` of the examples kept.
  """
  if imbalance_factor == 1:
    return np.arange(len(labels))
  sizes = np.bincount(labels, minlength=num_classes)
  targets = long_tail_counts(int(sizes.max()), num_classes, imbalance_factor)
  kept = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    n = min(int(targets[c]), len(members))
    kept.append(rng.choice(members, size=n, replace=False))
  return np.sort(np.concatenate(kept)).astype(np.int64)


# ----------------------------------------------------------------------------
# Label noise.
# ----------------------------------------------------------------------------


def noise_transition_matrix(
  noise_type: str, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
  """Row-stochastic label transition matrix `T[i, j] = P(noisy=j | clean=i)`.

  Args:
    noise_type: one of
      'none': identity;
      'uniform': with prob. `rate` the label moves to one of the C-1 *other*
        classes uniformly, so the realised corruption rate is `rate`;
      'pairflip': with prob. `rate`, i -> (i + 1) % C;
      'flip2': the paper's "two similar categories": each class c gets two
        distinct other classes (drawn from `rng`), each receiving prob.
        `rate / 2`.
    rate: corruption probability in [0, 1).
    num_classes: C.
    rng: randomness for the 'flip2' targets (unused otherwise).

  Returns:
    float64 [C, C], rows sum to 1, diagonal `1 - rate` (or 1 for 'none').
  """
  c = num_classes
  if noise_type not in NOISE_TYPES:
    raise ValueError(f"data.noise_type={noise_type!r}, expected one of {NOISE_TYPES}.")
  if not 0 <= rate < 1:
    raise ValueError(f"data.noise_rate={rate}, expected a float in [0, 1).")
  if noise_type == "none":
    return np.eye(c)
  t = np.eye(c) * (1 - rate)
  if noise_type == "uniform":
    t += (1 - np.eye(c)) * rate / (c - 1)
  elif noise_type == "pairflip":
    t[np.arange(c), (np.arange(c) + 1) % c] += rate
  elif noise_type == "flip2":
    if c < 3:
      raise ValueError(f"data.noise_type='flip2' needs at least 3 classes, got {c}.")
    for i in range(c):
      others = np.delete(np.arange(c), i)
      for j in rng.choice(others, size=2, replace=False):
        t[i, j] += rate / 2
  return t


def flip2_targets(transition: np.ndarray) -> list[np.ndarray]:
  """For each class, the classes its labels can be flipped to (off-diagonal
  non-zeros of a [C, C] transition matrix)."""
  off = transition * (1 - np.eye(len(transition)))
  return [np.flatnonzero(row) for row in off]


def apply_label_noise(
  labels: np.ndarray, transition: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
  """Draws a noisy label per example from its clean label's row of `T`.

  Args:
    labels: int [N] clean labels.
    transition: [C, C] row-stochastic matrix.
    rng: randomness of the draw.

  Returns:
    int32 [N] noisy labels.
  """
  cdf = np.cumsum(transition[labels], axis=1)
  u = rng.random(len(labels))[:, None]
  # Count how many CDF entries lie at or below u; clipping guards against the
  # last CDF entry being 1 - 1e-16 after rounding.
  noisy = np.minimum((cdf <= u).sum(axis=1), len(transition) - 1)
  return noisy.astype(np.int32)


# ----------------------------------------------------------------------------
# The whole pipeline.
# ----------------------------------------------------------------------------


def make_train_and_meta(
  raw: ArraySplit,
  *,
  num_classes: int,
  meta_per_class: int,
  imbalance_factor: float,
  noise_type: str,
  noise_rate: float,
  seed: int,
) -> tuple[ArraySplit, ArraySplit, np.ndarray]:
  """Raw train split -> (train, meta, transition matrix).

  Order: clean balanced meta hold-out, then long-tail subsampling of the rest,
  then label noise on what remains. `source_index` of both outputs indexes
  `raw`.

  Args:
    raw: the clean raw training split.
    num_classes: C.
    meta_per_class: meta examples per class (>= 0).
    imbalance_factor: IF >= 1 for the long tail.
    noise_type: see `noise_transition_matrix`.
    noise_rate: see `noise_transition_matrix`.
    seed: all randomness derives from it.

  Returns:
    train split (labels possibly noisy), meta split (clean), and the [C, C]
    transition matrix the noise was drawn from.
  """
  meta_idx, rest_idx = meta_split_indices(
    raw.clean_labels, meta_per_class, num_classes, stream_rng(seed, _STREAM_META)
  )
  meta = raw.take(meta_idx)
  rest = raw.take(rest_idx)
  keep = long_tail_indices(
    rest.clean_labels, num_classes, imbalance_factor, stream_rng(seed, _STREAM_LONG_TAIL)
  )
  train = rest.take(keep)
  transition = noise_transition_matrix(
    noise_type, noise_rate, num_classes, stream_rng(seed, _STREAM_NOISE_MATRIX)
  )
  noisy = apply_label_noise(train.clean_labels, transition, stream_rng(seed, _STREAM_NOISE_DRAW))
  train = dataclasses.replace(train, labels=noisy)
  return train, meta, transition
