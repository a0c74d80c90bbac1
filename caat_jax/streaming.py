"""Streamed training input (ImageNet) with grain, behind ``pipeline.TrainInput``'s
interface, and the device prefetch and input-wait timing every run uses.

``make_train_input`` picks the input of a dataset: in-memory splits (digits,
CIFAR-10, SVHN) keep ``pipeline.TrainInput``; splits whose images are
``data.imagenet.RecordImages`` get ``StreamingTrainInput``:

* the order is ``pipeline.epoch_permutation(seed, epoch)`` as in memory, so
  global batch ``step`` of ``epoch`` is a pure function of (seed, epoch,
  step): a resumed run reads exactly the batches it would have read;
* each process builds only its slice of each global batch (the slice
  ``pipeline.host_slice`` takes), reading only those records;
* grain worker processes read, decode (Pillow) and random-resized-crop and
  flip each image, with randomness keyed by (seed, epoch, example), so a
  batch does not depend on the worker count or on the process count;
* the meta batch (Meta-CAAT, Reinforce-CAAT) is drawn per step as in memory,
  from the clean balanced meta hold-out, read and augmented the same way.

grain rather than tf.data (needs TensorFlow) or a torch DataLoader (needs
torch): it is the JAX ecosystem's loader, reads tfds's array_record sources
directly and keeps the order deterministic with worker processes.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from caat_jax import data, pipeline
from caat_jax.data import imagenet

Batch = pipeline.Batch
_AUGMENT_STREAM = 0xC409
_META_AUGMENT_STREAM = 0xC40A


class _Plan:
  """What a worker needs to build a batch: picklable (no open source)."""

  def __init__(self, train: data.ArraySplit, meta, batch_size, meta_batch_size, seed, size):
    self.images = train.images
    self.labels = train.labels.astype(np.int32)
    self.corrupted = train.corrupted
    self.meta_images = meta.images if meta is not None else None
    self.meta_labels = meta.labels.astype(np.int32) if meta is not None else None
    self.batch_size, self.meta_batch_size = batch_size, meta_batch_size
    self.seed, self.size = seed, size
    self.process, self.num_processes = jax.process_index(), jax.process_count()

  @functools.lru_cache(maxsize=2)  # noqa: B019  (one plan per run, a few epochs)
  def permutation(self, epoch: int) -> np.ndarray:
    return pipeline.epoch_permutation(len(self.labels), self.seed, epoch)

  def local(self, n: int) -> np.ndarray:
    """Positions of this process's slice of a global batch of ``n``."""
    return np.array_split(np.arange(n), self.num_processes)[self.process]

  def _augmented(self, images: imagenet.RecordImages, records, rngs) -> np.ndarray:
    jpegs = images.read(images.index[records])
    out = np.empty((len(jpegs), self.size, self.size, 3), np.uint8)
    for k, (jpeg, rng) in enumerate(zip(jpegs, rngs)):
      out[k] = imagenet.random_resized_crop_flip(imagenet.decode(jpeg), self.size, rng)
    return out

  def batch(self, epoch: int, step: int) -> Batch:
    """This process's slice of global batch ``step`` of ``epoch``."""
    b = self.batch_size
    idx = self.permutation(epoch)[step * b : (step + 1) * b][self.local(b)]
    rngs = [np.random.default_rng([self.seed, epoch, int(i), _AUGMENT_STREAM]) for i in idx]
    out = {
      "image": self._augmented(self.images, idx, rngs),
      "label": self.labels[idx],
      "index": idx.astype(np.int32),
      "corrupted": self.corrupted[idx],
    }
    if self.meta_images is not None:
      mb, n = self.meta_batch_size, len(self.meta_labels)
      rng = np.random.default_rng([self.seed, epoch, step, 0x3E7A])  # as pipeline.train_batches
      pos = self.local(mb)
      m = rng.choice(n, mb, replace=mb > n)[pos]
      rngs = [
        np.random.default_rng([self.seed, epoch, step, int(j), _META_AUGMENT_STREAM]) for j in pos
      ]
      out["meta_image"] = self._augmented(self.meta_images, m, rngs)
      out["meta_label"] = self.meta_labels[m]
    return out


class _LoadBatch:
  """grain map function: step -> host-local batch (picklable for the workers)."""

  def __init__(self, plan: _Plan, epoch: int):
    self.plan, self.epoch = plan, epoch

  def __call__(self, step: int) -> Batch:
    return self.plan.batch(self.epoch, int(step))


class StreamingTrainInput:
  """``pipeline.TrainInput``'s interface over streamed records.

  ``steps_per_epoch``; ``batches(epoch, start)`` yields this process's slices
  of global batches ``start, start+1, ...``; ``batch(epoch, step)`` builds one
  in this process (what the workers run); ``throughput`` is the images per
  second the last ``batches`` iterator delivered (this process's).
  """

  def __init__(
    self,
    train: data.ArraySplit,
    *,
    batch_size: int,
    seed: int,
    meta: data.ArraySplit | None = None,
    meta_batch_size: int = 0,
    num_workers: int = 0,
  ):
    size = train.images.size
    self._plan = _Plan(train, meta, batch_size, meta_batch_size, seed, size)
    self.num_workers = num_workers
    self.steps_per_epoch = len(train) // batch_size
    self.throughput = 0.0

  def batch(self, epoch: int, step: int) -> Batch:
    return self._plan.batch(epoch, step)

  def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
    import grain  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():  # grain reads its settings from absl flags:
      flags.FLAGS.mark_as_parsed()  # their defaults, outside an absl app (tests, notebooks)
    ds = grain.MapDataset.range(start, self.steps_per_epoch).map(_LoadBatch(self._plan, epoch))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self.num_workers:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    t0, images = time.perf_counter(), 0
    for batch in it:
      images += len(batch["label"])
      self.throughput = images / max(time.perf_counter() - t0, 1e-9)
      yield batch


def make_train_input(dataset: data.Dataset, config, meta: bool):
  """The training input of ``dataset``: streamed for record-backed splits,
  ``pipeline.TrainInput`` for in-memory ones. ``meta``: attach meta batches."""
  kwargs = dict(
    batch_size=config.batch_size,
    seed=config.seed,
    meta=dataset.meta if meta else None,
    meta_batch_size=config.meta.batch_size,
  )
  if isinstance(dataset.train.images, imagenet.RecordImages):
    workers = data.stream_setting(config.data, "num_workers")
    return StreamingTrainInput(dataset.train, num_workers=workers, **kwargs)
  return pipeline.TrainInput(dataset.train, **kwargs)


def prefetch(iterator: Iterator, put: Callable, size: int) -> Iterator:
  """``put(x)`` (a device transfer) of the items of ``iterator``, issued
  ``size`` items ahead of the consumer, so transfers overlap the steps."""
  queue = collections.deque()
  for item in iterator:
    queue.append(put(item))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class WaitTimer:
  """Times how long the consumer of an iterator waits for each item.

  ``record()`` returns the mean wait per item (ms) and the fraction of the
  wall time spent waiting since the last ``record()``, and starts over.
  """

  def __init__(self):
    self._wait, self._items, self._t0 = 0.0, 0, time.perf_counter()

  def wrap(self, iterator: Iterator) -> Iterator:
    iterator = iter(iterator)
    while True:
      t = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        return
      self._wait += time.perf_counter() - t
      self._items += 1
      yield item

  def record(self) -> dict[str, float]:
    now = time.perf_counter()
    out = {
      "input/wait_ms": 1e3 * self._wait / max(self._items, 1),
      "input/wait_fraction": self._wait / max(now - self._t0, 1e-9),
    }
    self._wait, self._items, self._t0 = 0.0, 0, now
    return out
