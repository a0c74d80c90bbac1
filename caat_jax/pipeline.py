"""The one batch pipeline: host-local batches for training, evaluation,
validation and the benchmark.

Everything downstream consumes iterators of *host-local* numpy batches (this
process's slice of each global batch), so the trainer never knows whether the
data sit in memory (digits, CIFAR-10, SVHN as ``ArraySplit``s) or stream from
disk (a later ImageNet source only needs to provide the same ``TrainInput``
methods).
"""

from collections.abc import Iterator, Mapping

import jax
import numpy as np

from caat_jax import data

Batch = dict[str, np.ndarray]


def host_slice(batch: Mapping[str, np.ndarray]) -> Batch:
  """This process's contiguous slice of a global batch."""
  p, count = jax.process_index(), jax.process_count()
  if count == 1:
    return dict(batch)
  return {k: np.array_split(v, count)[p] for k, v in batch.items()}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training set in ``epoch``: a pure function of (seed, epoch),
  so a resumed run sees exactly the batches it would have seen."""
  return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(num_examples)


def train_batches(
  split: data.ArraySplit,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  start: int = 0,
  meta: data.ArraySplit | None = None,
  meta_batch_size: int = 0,
) -> Iterator[Batch]:
  """This process's slices of the global batches ``start, start+1, ...`` of
  ``epoch`` (the incomplete last batch is dropped).

  With ``meta`` each batch also carries ``meta_image`` / ``meta_label``:
  ``meta_batch_size`` distinct meta examples drawn afresh for every step from
  (seed, epoch, step-in-epoch), so resumption sees the same.
  """
  perm = epoch_permutation(len(split), seed, epoch)
  for i in range(start, len(split) // batch_size):
    idx = perm[i * batch_size : (i + 1) * batch_size]
    batch = {
      "image": split.images[idx],
      "label": split.labels[idx].astype(np.int32),
      "index": idx.astype(np.int32),
      "corrupted": split.corrupted[idx],
    }
    if meta is not None:
      rng = np.random.default_rng([seed, epoch, i, 0x3E7A])
      m = rng.choice(len(meta), meta_batch_size, replace=meta_batch_size > len(meta))
      batch["meta_image"] = meta.images[m]
      batch["meta_label"] = meta.labels[m].astype(np.int32)
    yield host_slice(batch)


class TrainInput:
  """The training stream of a run: ``steps_per_epoch`` and ``batches(epoch, start)``.

  In-memory splits here; a streaming source provides the same two members.
  """

  def __init__(
    self,
    train: data.ArraySplit,
    *,
    batch_size: int,
    seed: int,
    meta: data.ArraySplit | None = None,
    meta_batch_size: int = 0,
  ):
    self._train, self._meta = train, meta
    self._batch_size, self._seed, self._meta_batch_size = batch_size, seed, meta_batch_size
    self.steps_per_epoch = len(train) // batch_size

  def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
    """This process's training batches of ``epoch`` from batch ``start`` on."""
    return train_batches(
      self._train,
      batch_size=self._batch_size,
      seed=self._seed,
      epoch=epoch,
      start=start,
      meta=self._meta,
      meta_batch_size=self._meta_batch_size,
    )


def eval_batches(
  split: data.ArraySplit, *, batch_size: int, num_examples: int = 0, multiple_of: int = 1
) -> Iterator[tuple[Batch, np.ndarray]]:
  """(host-local batch, valid [global batch] bool) over the first
  ``num_examples`` points of ``split`` (0: all).

  The global batch size is rounded up to a multiple of ``multiple_of`` (the
  device count) and the last batch is padded with point 0, so one shape (one
  compilation) serves every batch; ``valid`` marks the real points. ``index``
  is each point's position in the split (it keys attack randomness, so
  results do not depend on batch size or device count).
  """
  n = len(split) if not num_examples else min(num_examples, len(split))
  batch_size = -(-batch_size // multiple_of) * multiple_of
  for s in range(0, n, batch_size):
    idx = np.arange(s, s + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {
      "image": split.images[idx],
      "label": split.labels[idx].astype(np.int32),
      "index": idx.astype(np.int32),
    }
    yield host_slice(batch), valid


def num_eval_points(split: data.ArraySplit, num_examples: int = 0) -> int:
  return len(split) if not num_examples else min(num_examples, len(split))


def synthetic_dataset(name: str, num_examples: int) -> data.Dataset:
  """Random data of dataset ``name``'s shape (the benchmark's; no download)."""
  spec = data.spec(name)
  shape, num_classes = spec.image_shape, spec.num_classes
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples,) + shape, dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  split = data.ArraySplit(
    images=images, labels=labels, clean_labels=labels, source_index=np.arange(num_examples)
  )
  return data.Dataset(
    name=name,
    num_classes=num_classes,
    image_shape=shape,
    train=split,
    meta=split,
    test=split,
    mean=(0.5,) * shape[-1],
    std=(0.25,) * shape[-1],
    augment=spec.augment,
  )
