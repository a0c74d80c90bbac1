"""A checkpoint save that fails on one process of a multi-host job.

On one host a failed save ends the run at the step it is noticed
(``CheckpointSaveError``). On several, the process whose save failed cannot
simply stop: the others would wait for it in the next collective, and their
own share of the save waits for it at orbax's commit barrier (until orbax's
timeout, 10 minutes). So a failed save is acted on only where every process
waits for the save anyway, at the same step on all of them: before the next
save starts, before a preemption stop, and at the end of training
(``Checkpointer.wait``). There:

* the process whose save failed publishes its one-line error in the
  coordination service's key-value store (``stop_on_save_error``);
* the others, instead of blocking on their part of the save, poll that
  store while it is in flight (``wait_for_save``) and find the error;
* every process prints one line naming the process whose save failed and
  where all stopped, and exits with status 1 (``stop_all``): through a
  barrier, the coordinator last, and without joining the save blocked at
  orbax's barrier (that save is abandoned: its temporary directory is
  removed, and the earlier checkpoints are kept, whole).

The per-step check (``Checkpointer.check_for_errors``) stays silent on
several processes: acting there would stop the failing process a few steps
before the others.
"""

import logging
import os
import shutil
import sys
import time

import jax

from caat_jax import multihost
from caat_jax.checkpointing import orbax_internals, save_failure

_KEY = "caat_jax/save_failed/"


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return distributed.global_state.client


def active() -> bool:
  """Whether this process is one of several joined by JAX's coordination service."""
  return jax.process_count() > 1 and _client() is not None


def published_failures() -> list[tuple[int, str]]:
  """[(process, message)] of the failed saves published so far."""
  if not active():
    return []
  try:
    entries = _client().key_value_dir_get(_KEY)
  except Exception:  # pylint: disable=broad-except
    return []
  return sorted((int(k.rsplit("/", 1)[-1]), v) for k, v in entries)


def _where(step) -> str:
  return f"before saving step {step}" if step is not None else "at the end of training"


_local_failure: list[BaseException] = []  # this process's failed background write


def wait_for_save(manager, directory: str, step: int | None, before: int | None) -> None:
  """Blocks until this process's part of the save of ``step`` in flight is
  done, unless a process's part failed: then stops the job (``stop_all``).
  ``before``: the step about to be saved (None: the end)."""
  if not active():
    return
  orbax_internals.record_background_errors(manager, _local_failure.append)
  while manager.is_saving_in_progress():
    if _local_failure:  # orbax now waits at its barrier for the others
      err = save_failure.save_error(directory, step, _local_failure[0])
      stop_on_save_error(err, directory, before)
    _stop_if_published(directory, before)
    time.sleep(0.1)
  _stop_if_published(directory, before)


def _stop_if_published(directory: str, before: int | None) -> None:
  failures = published_failures()
  if failures:
    who, message = failures[0]
    stop_all(1, _line(who, message, before), directory)


def _line(who: int, message: str, before: int | None) -> str:
  here = jax.process_index()
  where = "this process" if who == here else f"process {who}"
  return (
    f"error: process {here} of {jax.process_count()}: a checkpoint save failed on {where}; "
    f"every process stopped {_where(before)}. {message}"
  )


def stop_on_save_error(err: Exception, directory: str, before: int | None) -> None:
  """This process's save failed. On several processes: publishes the error
  for the others (each finds it at the same point, ``wait_for_save``) and
  stops the job; on one, returns (the caller raises ``err``)."""
  if not active():
    return
  _client().key_value_set(f"{_KEY}{jax.process_index()}", str(err))
  stop_all(1, _line(jax.process_index(), str(err), before), directory)


def stop_all(code: int, line: str, directory: str) -> None:
  """Ends every process of the job with ``code`` and one ``line`` each.

  Called by every process at the same step. Leaves through a barrier
  (``multihost.stop_watch``) so that none is taken for lost; process 0 (the
  coordinator) removes abandoned temporary checkpoint directories and leaves
  last, since the others abort when the coordinator goes first. ``os._exit``:
  the save blocked at orbax's barrier would otherwise hold the interpreter's
  exit until orbax's own timeout.
  """
  # Process 0's progress bar leaves its line open: start a new one.
  sys.stderr.write(("\n" if jax.process_index() == 0 else "") + line + "\n")
  sys.stdout.flush()
  sys.stderr.flush()
  if jax.process_index() == 0:
    _remove_tmp_dirs(directory)
  # A barrier, then the others leave before process 0. They do not
  # disconnect first: their part of the save may still be blocked at an
  # orbax barrier through the same connection (disconnecting under it
  # aborted the process); process 0 waits until the service has seen them go.
  multihost.stop_watch(disconnect=False)
  logging.shutdown()
  os._exit(code)  # pylint: disable=protected-access


def _remove_tmp_dirs(directory: str) -> None:
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
