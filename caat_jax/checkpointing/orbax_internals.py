"""The one place where caat_jax reaches into orbax's private attributes.

orbax has no public way to wait for the writes of a save it has stopped
waiting for (``wait_for_abandoned_writes`` says why that is needed). Every
private attribute is looked up through ``_require``, which raises
``OrbaxInternalsError`` naming the attribute when the installed orbax lacks
it, so an orbax upgrade that removes or renames one is reported at once (by
``tests/test_checkpointing_orbax.py``, and by the run that needs it) instead
of silently skipping the wait. Nothing else in ``caat_jax.checkpointing``
uses orbax's private attributes or ``orbax.checkpoint._src``.
"""

from typing import Any

import orbax.checkpoint as ocp


class OrbaxInternalsError(RuntimeError):
  """An orbax private attribute that caat_jax relies on does not exist."""


def _require(obj: Any, path: str, purpose: str) -> Any:
  """``obj.<path>`` for a dotted attribute path, each step checked.

  Raises:
    OrbaxInternalsError: naming the first attribute on the path that is
      missing, the orbax version, and what caat_jax needed it for.
  """
  value, walked = obj, type(obj).__name__
  for name in path.split("."):
    if not hasattr(value, name):
      raise OrbaxInternalsError(
        f"orbax {getattr(ocp, '__version__', '(unknown version)')}: "
        f"{walked} has no attribute {name!r}: an orbax upgrade removed or renamed "
        f"this private orbax attribute, which caat_jax uses to {purpose}. Update "
        "caat_jax/checkpointing/orbax_internals.py for this orbax version "
        "(tests/test_checkpointing_orbax.py checks it), or install the orbax "
        "version caat_jax was tested with."
      )
    value = getattr(value, name)
    walked = f"{walked}.{name}"
  return value


_WAIT_PURPOSE = (
  "wait for the writes of a failed checkpoint save before removing its temporary directory"
)


def wait_for_abandoned_writes(manager: ocp.CheckpointManager, timeout: float = 60) -> None:
  """Waits for the writes of the last save that orbax stopped waiting for.

  When a write of an asynchronous save fails, orbax's wait ends at that first
  failure, while the save's other writes (tensorstore commit futures) and its
  checkpoint metadata write may still be running: they would recreate files
  in the temporary directory the caller is about to remove. orbax keeps them
  only on private attributes of the manager's checkpointer:

  * ``manager._checkpointer`` (every manager);
  * ``._async_manager._commit_futures`` of it (an ``ocp.AsyncCheckpointer``
    only: a synchronous save's writes are finished when ``save`` returns);
    None or a list of futures with ``result(timeout)``;
  * ``._metadata_store`` of it, whose public ``wait_until_finished`` is called.

  Each future is waited for up to ``timeout`` seconds. Errors of those
  writes are not raised: they are the failure already reported.

  Raises:
    OrbaxInternalsError: one of those attributes does not exist in the
      installed orbax (all are looked up before anything is waited for).
  """
  checkpointer = _require(manager, "_checkpointer", _WAIT_PURPOSE)
  futures = None
  if isinstance(checkpointer, ocp.AsyncCheckpointer):
    futures = _require(checkpointer, "_async_manager._commit_futures", _WAIT_PURPOSE)
  wait_for_metadata = _require(checkpointer, "_metadata_store.wait_until_finished", _WAIT_PURPOSE)
  for f in futures or ():
    try:
      f.result(timeout=timeout)
    except Exception:  # pylint: disable=broad-except
      pass  # the failure itself, already reported
  try:
    wait_for_metadata()
  except Exception:  # pylint: disable=broad-except
    pass


_RECORD_PURPOSE = (
  "notice, on a multi-host job, that this process's part of a save failed while orbax "
  "still waits for the other processes at its barrier"
)


def record_background_errors(manager: ocp.CheckpointManager, record) -> None:
  """Calls ``record(error)`` when the background write of a save fails.

  orbax raises that error in its finalize thread, which then waits at a
  barrier for the other processes (which wait at another one for this
  process): ``is_saving_in_progress`` stays true until orbax's timeout, and
  the error reaches the caller only then. ``_checkpointer._async_manager``'s
  ``check_for_errors`` is where it is raised first; it is wrapped, once.
  """
  async_manager = _require(manager, "_checkpointer._async_manager", _RECORD_PURPOSE)
  original = _require(async_manager, "check_for_errors", _RECORD_PURPOSE)
  if getattr(original, "_caat_recording", False):
    return

  def check_for_errors():
    try:
      return original()
    except BaseException as e:
      record(e)
      raise

  check_for_errors._caat_recording = True  # pylint: disable=protected-access
  async_manager.check_for_errors = check_for_errors
