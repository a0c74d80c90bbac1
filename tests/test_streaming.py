"""caat_jax.streaming: the streamed (grain) training input on a tiny
imagenet2012 in TFDS's real on-disk format, and the trainer's use of it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from caat_jax import data, pipeline, streaming
from tests.data import tiny_imagenet as tiny
from tests.data.test_imagenet import imagenet_config
from tests.helpers import digits_config, records

BATCH, META_BATCH = 8, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  with tiny.tiny_imagenet(str(tmp_path_factory.mktemp("tfds"))) as d:
    yield d, data.load_dataset(imagenet_config(d))


def make_input(ds, **kwargs):
  return streaming.StreamingTrainInput(
    ds.train, batch_size=BATCH, seed=3, meta=ds.meta, meta_batch_size=META_BATCH, **kwargs
  )


def assert_batches_equal(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_global_batches_partitioned_exactly_across_two_processes(dataset, monkeypatch):
  _, ds = dataset
  whole = make_input(ds)
  parts = []
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts.append(make_input(ds))
  assert whole.steps_per_epoch == len(ds.train) // BATCH
  for epoch in (0, 1):
    perm = pipeline.epoch_permutation(len(ds.train), 3, epoch)
    for step in range(whole.steps_per_epoch):
      one = whole.batch(epoch, step)
      two = [p.batch(epoch, step) for p in parts]
      assert [len(t["label"]) for t in two] == [BATCH // 2] * 2
      assert [len(t["meta_label"]) for t in two] == [META_BATCH // 2] * 2
      joined = {k: np.concatenate([t[k] for t in two]) for k in one}
      assert_batches_equal(joined, one)  # images too: augmentation keyed by example
      np.testing.assert_array_equal(one["index"], perm[step * BATCH : (step + 1) * BATCH])
      np.testing.assert_array_equal(one["label"], ds.train.labels[one["index"]])


def test_meta_batches_from_the_clean_meta_set_only(dataset):
  _, ds = dataset
  batch = make_input(ds).batch(0, 1)
  assert batch["meta_image"].shape == (META_BATCH, 16, 16, 3)
  assert set(batch["meta_label"]) <= set(ds.meta.labels)
  # index is the position in the training split; its records are not meta records
  assert not set(ds.train.source_index[batch["index"]]) & set(ds.meta.source_index)


def test_order_identical_after_resume_at_any_step(dataset):
  _, ds = dataset
  inp = make_input(ds)
  full = list(inp.batches(1))
  assert len(full) == inp.steps_per_epoch and inp.throughput > 0
  for start in range(inp.steps_per_epoch):
    resumed = list(make_input(ds).batches(1, start=start))
    assert len(resumed) == len(full) - start
    for a, b in zip(resumed, full[start:]):
      assert_batches_equal(a, b)
  assert not np.array_equal(full[0]["index"], next(inp.batches(0))["index"])  # epochs differ


def test_worker_processes_give_the_same_batches(dataset):
  _, ds = dataset
  ref = list(make_input(ds).batches(0, start=1))
  got = list(make_input(ds, num_workers=2).batches(0, start=1))
  assert len(got) == len(ref)
  for a, b in zip(got, ref):
    assert_batches_equal(a, b)


def test_make_train_input_keeps_in_memory_datasets_in_memory(dataset):
  _, ds = dataset
  config = digits_config()
  digits = data.load_dataset(config.data)
  assert isinstance(streaming.make_train_input(digits, config, meta=False), pipeline.TrainInput)
  assert isinstance(
    streaming.make_train_input(ds, config, meta=True), streaming.StreamingTrainInput
  )


def test_prefetch_runs_ahead_and_keeps_order():
  put_log = []

  def put(x):
    put_log.append(x)
    return x * 10

  out = []
  for y in streaming.prefetch(iter(range(5)), put, 2):
    out.append(y)
    assert len(put_log) == min(len(out) + 2, 5)  # two transfers issued ahead
  assert out == [0, 10, 20, 30, 40]


def test_wait_timer_counts_waits():
  timer = streaming.WaitTimer()
  assert list(timer.wrap(iter([1, 2, 3]))) == [1, 2, 3]
  rec = timer.record()
  assert rec["input/wait_ms"] >= 0 and 0 <= rec["input/wait_fraction"] <= 1
  assert timer.record()["input/wait_ms"] == 0  # started over


@pytest.mark.slow  # ~45 s on 2 busy cores (training, then a PGD evaluation)
def test_main_trains_on_streamed_imagenet_and_logs_input_wait(dataset, tmp_path):
  from caat_jax import train

  data_dir, _ = dataset
  c = digits_config(
    **{
      "data.name": "imagenet2012",
      "data.data_dir": data_dir,
      "data.meta_per_class": 2,
      "data.image_size": 16,
      "data.num_workers": 0,
      "batch_size": BATCH,
      "log_every_steps": 2,
      "eval.num_examples": 8,
      "eval.batch_size": 8,
    }
  )
  docs = train.train_and_evaluate(c, str(tmp_path))
  assert docs[0]["num_examples"] == 8
  recs = [r for r in records(str(tmp_path), keep_timing=True) if "train/loss" in r]
  assert [r["step"] for r in recs] == [2, 4]
  for r in recs:
    assert r["input/wait_ms"] >= 0 and 0 <= r["input/wait_fraction"] <= 1
    assert r["input/images_per_sec"] > 0


def test_no_transfer_to_host_in_the_steady_state():
  """The loop's per-step work (next device batch, step, metrics window) runs
  under ``jax.transfer_guard('disallow')`` once compiled: no implicit
  transfer either way, so nothing waits on the device between steps."""
  from caat_jax import metrics, train

  run = train.Run(digits_config(batch_size=32))
  rstate = run.parallel.replicate(run.init_state())
  batches = run.device_steps(0)
  window = metrics.Window()
  _, batch = next(batches)
  rstate, m = run.train_step(rstate, batch)  # compiles
  window.add(m)
  with jax.transfer_guard("disallow"):
    for _ in range(3):
      _, batch = next(batches)  # prefetched: explicit device_put only
      rstate, m = run.train_step(rstate, batch)
      window.add(m)
  assert int(run.parallel.fetch(rstate).step) == 4
