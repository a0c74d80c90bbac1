"""The orbax private attributes caat_jax relies on, checked against the
installed orbax: ``checkpointing.orbax_internals`` is the only code that uses
them. If an orbax upgrade removes or renames one, these tests fail with the
name of the attribute (instead of failed saves quietly leaving temporary
directories behind)."""

import concurrent.futures
import errno
import glob
import os
import threading
import time
import types

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from caat_jax import checkpointing
from caat_jax.checkpointing import orbax_internals, save_failure


def _state():
  return {
    "params": {f"layer_{i}": np.full((3, 4), i, np.float32) for i in range(4)},
    "step": np.int32(7),
  }


def _config():
  return ml_collections.ConfigDict({"seed": 0})


@pytest.fixture(params=[True, False], ids=["async", "sync"])
def ckpt(request, tmp_path):
  c = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2, async_save=request.param)
  yield c
  c.close()


class _StoreSpy:
  """Wraps the real metadata store, recording ``wait_until_finished`` calls."""

  def __init__(self, store):
    self._store, self.waited = store, 0

  def wait_until_finished(self):
    self.waited += 1
    return self._store.wait_until_finished()

  def __getattr__(self, name):
    return getattr(self._store, name)


# -- the installed orbax has what is needed, and the wait does its job ---------


def test_waits_for_commit_futures_and_metadata_writes(ckpt, monkeypatch):
  checkpointer = ckpt.manager._checkpointer  # pylint: disable=protected-access
  spy = _StoreSpy(checkpointer._metadata_store)  # pylint: disable=protected-access
  monkeypatch.setattr(checkpointer, "_metadata_store", spy)
  ckpt.save(1, _state(), _config())
  slow = concurrent.futures.Future()  # a write that is still running
  if isinstance(checkpointer, ocp.AsyncCheckpointer):
    async_manager = checkpointer._async_manager  # pylint: disable=protected-access
    futures = list(async_manager._commit_futures or [])  # pylint: disable=protected-access
    assert futures, "orbax no longer keeps the save's commit futures there"
    monkeypatch.setattr(async_manager, "_commit_futures", futures + [slow])
    threading.Timer(0.5, slow.set_result, [None]).start()
  else:
    futures = []
    slow.set_result(None)  # a synchronous save has no write left in flight
  t0 = time.time()
  orbax_internals.wait_for_abandoned_writes(ckpt.manager)
  assert slow.done()
  if futures:
    assert time.time() - t0 >= 0.4  # it waited for the slow one
  for f in futures:  # finished: no TimeoutError (orbax raises it for timeout=0)
    f.result(timeout=0.01)
  assert spy.waited >= 1
  ckpt.wait()
  assert ckpt.all_steps() == [1]


def test_failed_save_leaves_no_tmp_dir(tmp_path, monkeypatch):
  from orbax.checkpoint._src.checkpointers import async_checkpointer  # pylint: disable=g-import-not-at-top

  directory = str(tmp_path / "ck")
  ckpt = checkpointing.Checkpointer(directory, keep=2)
  ckpt.save(1, _state(), _config())
  ckpt.wait()
  calls = []
  real_wait = orbax_internals.wait_for_abandoned_writes

  def wait(manager, *args, **kwargs):
    calls.append(manager)
    return real_wait(manager, *args, **kwargs)

  monkeypatch.setattr(orbax_internals, "wait_for_abandoned_writes", wait)

  def disk_full(*args, **kwargs):  # the background write fails, its writes go on
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", disk_full)
  ckpt.save(2, _state(), _config())
  with pytest.raises(checkpointing.CheckpointSaveError, match="saving step 2"):
    ckpt.wait()
  ckpt.close()
  assert calls and all(m is ckpt.manager for m in calls)
  assert not glob.glob(os.path.join(directory, "*orbax-checkpoint-tmp*"))
  assert sorted(os.listdir(directory)) == ["1"]


# -- an orbax without one of them is reported, naming it -----------------------


def _drop_checkpointer(manager, monkeypatch):
  monkeypatch.delattr(manager, "_checkpointer")


def _drop_async_manager(manager, monkeypatch):
  monkeypatch.delattr(manager._checkpointer, "_async_manager")  # pylint: disable=protected-access


def _drop_commit_futures(manager, monkeypatch):
  monkeypatch.delattr(manager._checkpointer._async_manager, "_commit_futures")  # pylint: disable=protected-access


def _drop_metadata_store(manager, monkeypatch):
  monkeypatch.delattr(manager._checkpointer, "_metadata_store")  # pylint: disable=protected-access


def _store_without_wait(manager, monkeypatch):
  monkeypatch.setattr(manager._checkpointer, "_metadata_store", object())  # pylint: disable=protected-access


@pytest.mark.parametrize(
  "drop, missing",
  [
    (_drop_checkpointer, "_checkpointer"),
    (_drop_async_manager, "_async_manager"),
    (_drop_commit_futures, "_commit_futures"),
    (_drop_metadata_store, "_metadata_store"),
    (_store_without_wait, "wait_until_finished"),
  ],
)
def test_missing_orbax_attribute_is_named(tmp_path, monkeypatch, drop, missing):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2)
  try:
    drop(ckpt.manager, monkeypatch)
    with pytest.raises(orbax_internals.OrbaxInternalsError) as e:
      orbax_internals.wait_for_abandoned_writes(ckpt.manager)
  finally:
    monkeypatch.undo()
    ckpt.close()
  msg = str(e.value)
  assert isinstance(e.value, RuntimeError)
  assert f"no attribute {missing!r}" in msg
  assert "orbax upgrade removed or renamed" in msg
  assert "failed checkpoint save" in msg  # what it was needed for
  assert "orbax_internals.py" in msg


def test_missing_attribute_is_not_swallowed_by_the_cleanup(tmp_path):
  directory = tmp_path / "ck"
  (directory / "3.orbax-checkpoint-tmp-1234").mkdir(parents=True)
  fake_manager = types.SimpleNamespace()  # an orbax manager without _checkpointer
  with pytest.raises(orbax_internals.OrbaxInternalsError, match="'_checkpointer'"):
    save_failure.remove_tmp(fake_manager, str(directory), 3)
