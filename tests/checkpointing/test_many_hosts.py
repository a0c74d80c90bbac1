"""The single-process side of ``checkpointing.many_hosts`` and the orbax hook
it relies on (``orbax_internals.record_background_errors``), checked against
the installed orbax. Two processes: tests/test_multiprocess_faults.py (slow)."""

import errno

import ml_collections
import numpy as np
import pytest

from caat_jax import checkpointing
from caat_jax.checkpointing import many_hosts, orbax_internals


def _config():
  return ml_collections.ConfigDict({"seed": 0})


def _state():
  return {"params": {"w": np.ones((3, 4), np.float32)}, "step": np.int32(1)}


def test_record_background_errors_sees_the_failed_write_once(tmp_path, monkeypatch):
  from orbax.checkpoint._src.checkpointers import async_checkpointer  # pylint: disable=g-import-not-at-top

  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2)
  seen = []
  orbax_internals.record_background_errors(ckpt.manager, seen.append)
  orbax_internals.record_background_errors(ckpt.manager, seen.append)  # not wrapped twice
  ckpt.save(1, _state(), _config())
  ckpt.wait()
  assert seen == []  # a good save records nothing

  def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", disk_full)
  ckpt.save(2, _state(), _config())
  with pytest.raises(checkpointing.CheckpointSaveError, match="saving step 2"):
    ckpt.wait()
  ckpt.close()
  assert len(seen) == 1 and isinstance(seen[0], OSError) and seen[0].errno == errno.ENOSPC


def test_record_background_errors_names_a_missing_orbax_attribute(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2)
  try:
    monkeypatch.delattr(ckpt.manager._checkpointer, "_async_manager")  # pylint: disable=protected-access
    with pytest.raises(orbax_internals.OrbaxInternalsError, match="'_async_manager'"):
      orbax_internals.record_background_errors(ckpt.manager, print)
  finally:
    monkeypatch.undo()
    ckpt.close()


def test_one_process_keeps_the_one_host_behaviour(tmp_path):
  assert not many_hosts.active()
  assert many_hosts.published_failures() == []
  # Neither waits nor exits: the caller raises the error as on one host.
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ck"), keep=2)
  many_hosts.wait_for_save(ckpt.manager, ckpt.directory, None, None)
  assert many_hosts.stop_on_save_error(RuntimeError("x"), ckpt.directory, 5) is None
  ckpt.close()
