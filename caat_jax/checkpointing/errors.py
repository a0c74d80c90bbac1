"""What can go wrong with checkpoints, said in one line each.

The exception types of ``caat_jax.checkpointing`` (re-exported there), the exit
statuses that go with stopping early, and the two pieces of orbax noise that
would otherwise bury those one-line messages under tracebacks:

* a background save that fails is logged by orbax with a traceback, from its
  own threads (the data, the metadata), before the error reaches the trainer;
  ``CheckpointSaveError`` reports it instead, so those records are dropped
  (``quiet_orbax_save_errors``), and the "Event loop is closed" echoes of its
  writes still in flight too (``quiet_failed_restore_noise``, which the
  ``Checkpointer`` installs for saves as well);
* a restore that fails part way (a truncated checkpoint) leaves tensorstore
  reads in flight whose callbacks land on the event loop orbax has already
  closed; each prints "RuntimeError: Event loop is closed" through
  ``sys.unraisablehook`` (about 90 lines for a small model), or asyncio's
  "Future exception was never retrieved". Those, and only those, are
  dropped (``quiet_failed_restore_noise``).
"""

import logging
import shutil
import signal
import sys
from typing import Any

import jax
import numpy as np

# Exit status of a job that saved and stopped because it was told it would be
# preempted: 128 + SIGTERM, what a shell reports for a process ended by
# SIGTERM, so schedulers and launch scripts treat it as "terminated, restart
# me" rather than as success (0) or as a crash (1).
EXIT_PREEMPTED = 128 + signal.SIGTERM
# Exit status after Ctrl-C (SIGINT) made the job save and stop: 128 + SIGINT,
# as a shell reports a process ended by Ctrl-C.
EXIT_INTERRUPTED = 128 + signal.SIGINT


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read (or one cannot be written).

  ``reasons``: [(step, why)] for each step tried, ``why`` in full on one line
  (empty when the error is not about reading steps).
  """

  def __init__(self, message: str, reasons: list[tuple[int, str]] = ()):
    super().__init__(message)
    self.reasons = list(reasons)


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, I/O error); older ones are kept."""


class IncompatibleConfigError(ValueError):
  """The config differs from the checkpoint's in keys that change the run."""


class Preempted(Exception):
  """The job saved a checkpoint at ``step`` and stopped (preemption or Ctrl-C).

  ``exit_code`` is the status the process should end with: 130 after SIGINT
  (Ctrl-C), 143 (``EXIT_PREEMPTED``) after SIGTERM or a preemption notice.
  """

  def __init__(self, step: int, reason: str):
    interrupted = reason == "SIGINT"
    what = "interrupted" if interrupted else "preempted"
    super().__init__(
      f"{what} ({reason}): saved a checkpoint at step {step} and stopped; "
      "run the same command again to resume."
    )
    self.step = step
    self.reason = reason
    self.exit_code = EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED


def one_line(err: BaseException, limit: int | None = 300) -> str:
  """``Type: message`` on one line, without tensorstore's JSON spec; longer
  than ``limit`` characters (None: never cut), cut at a word boundary."""
  text = str(err).split(" [tensorstore_spec=")[0]
  text = " ".join(text.split())
  if limit is not None and len(text) > limit:
    text = text[:limit].rsplit(" ", 1)[0] + " ..."
  return f"{type(err).__name__}: {text}"


def _size(n: int) -> str:
  for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n} bytes"


def disk_space(path: str) -> str:
  """'1.2 GiB free of 50.0 GiB' for the filesystem of ``path`` ('' if unknown);
  smaller sizes in MiB, KiB or bytes ('0 bytes free of 152.0 KiB')."""
  try:
    usage = shutil.disk_usage(path)
  except OSError:
    return ""
  return f"{_size(usage.free)} free of {_size(usage.total)}"


# -- parameter shapes ---------------------------------------------------------


def _flat(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{'params.Conv_0.kernel': (shape, dtype)} for every array-like leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    out[name] = (
      None if shape is None else tuple(shape),
      None if dtype is None else np.dtype(dtype),
    )
  return out


def layout_differences(stored: Any, target: Any) -> list[tuple[str, str, str]]:
  """Leaves whose presence, shape or dtype differ: [(path, stored, expected)].

  ``stored`` is orbax's metadata tree of a checkpoint (leaves with ``shape``
  and ``dtype``), ``target`` the state the current config builds. A leaf whose
  metadata carries no shape or dtype is compared on presence only.
  """
  old, new = _flat(stored), _flat(target)
  fmt = lambda sd: "missing" if sd is None else f"{sd[0]} {sd[1]}"
  diffs = []
  # Parameters first: they name the layer that changed.
  for key in sorted(set(old) | set(new), key=lambda k: (not k.startswith("params"), k)):
    a, b = old.get(key), new.get(key)
    if a is None or b is None:
      diffs.append((key, fmt(a), fmt(b)))
      continue
    if (a[0] is not None and b[0] is not None and a[0] != b[0]) or (
      a[1] is not None and b[1] is not None and a[1] != b[1]
    ):
      diffs.append((key, fmt(a), fmt(b)))
  return diffs


def layout_error(
  diffs: list[tuple[str, str, str]], step: int, directory: str, show: int = 3
) -> IncompatibleConfigError:
  lines = "\n".join(f"  {k}: checkpoint {o} -> now {n}" for k, o, n in diffs[:show])
  more = f"\n  ... and {len(diffs) - show} more" if len(diffs) > show else ""
  return IncompatibleConfigError(
    f"the checkpoint at step {step} in {directory} holds {len(diffs)} parameter(s) "
    f"of another shape or dtype than this config builds:\n{lines}{more}\n"
    "--allow_config_change never allows that: use the original model settings "
    "or another --workdir."
  )


# -- noise --------------------------------------------------------------------

# Messages orbax logs (with a traceback, at ERROR) when a background save
# fails; the same error is raised to the caller as CheckpointSaveError. The
# last one comes from writes still in flight when the save is abandoned.
_ORBAX_SAVE_FAILURE_LOGS = (
  "in background save thread",
  "Save Finalize thread",
  "Checkpointer failed",
  "_SignalingThread.run() raised an exception",
  "Failed to write metadata",
)
# Any orbax warning or error about a save's temporary folder, or a full disk,
# is about a failed save too (its metadata written or read back there).
_ORBAX_SAVE_FAILURE_TEXT = (".orbax-checkpoint-tmp", "No space left on device")


class _DropOrbaxSaveFailures(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname or record.levelno < logging.WARNING:
      return True
    msg = str(record.msg)
    if any(m in msg for m in _ORBAX_SAVE_FAILURE_LOGS):
      return False
    try:
      text = record.getMessage()
    except Exception:  # pylint: disable=broad-except  (a bad format: keep it)
      return True
    if record.exc_info and record.exc_info[1] is not None:
      text += f" {record.exc_info[1]}"
    return not any(t in text for t in _ORBAX_SAVE_FAILURE_TEXT)


_SAVE_FILTER = _DropOrbaxSaveFailures()


def quiet_orbax_save_errors() -> None:
  """Drops orbax's traceback logs of failed saves (idempotent)."""
  # orbax logs through absl, whose records all go to the "absl" logger.
  logger = logging.getLogger("absl")
  if _SAVE_FILTER not in logger.filters:
    logger.addFilter(_SAVE_FILTER)


_HOOKED = {}  # "unraisablehook" / "excepthook" -> the hook it replaced


def _is_closed_loop_callback(exc, tb, _type=RuntimeError) -> bool:
  """Tensorstore's callback of a finished read or write landing on a closed loop."""
  return (
    isinstance(exc, _type)
    and str(exc) == "Event loop is closed"
    and tb is not None
    and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
  )


def _closed_loop_filters(previous_unraisable, previous_except):
  """The two hooks, holding all they use in default arguments: some echoes
  arrive while the interpreter exits, after this module's globals are
  cleared (a hook that then fails prints the echo after all)."""

  def unraisable(u, _is=_is_closed_loop_callback, _previous=previous_unraisable) -> None:
    if not _is(u.exc_value, u.exc_traceback):
      _previous(u)

  # Tensorstore prints some of them with PyErr_Print, i.e. sys.excepthook.
  def excepthook(t, exc, tb, _is=_is_closed_loop_callback, _previous=previous_except) -> None:
    if not _is(exc, tb):
      _previous(t, exc, tb)

  return unraisable, excepthook


class _DropUnretrievedReadErrors(logging.Filter):
  """asyncio's 'Future (or Task) exception was never retrieved' for
  tensorstore reads, and for the writes of a failed save (into its temporary
  folder, reported as ``CheckpointSaveError``): which of the two asyncio logs
  depends on whether the I/O was wrapped in a task, i.e. on timing."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (
      str(record.msg).startswith(
        ("Future exception was never retrieved", "Task exception was never retrieved")
      )
      and exc is not None
      and ("tensorstore_spec" in str(exc) or ".orbax-checkpoint-tmp" in str(exc))
    )


_READ_FILTER = _DropUnretrievedReadErrors()


def quiet_failed_restore_noise() -> None:
  """Drops the echoes of a failed restore's other reads (idempotent).

  When one array of a checkpoint fails to read, orbax stops waiting and
  closes its event loop; the other reads then finish into nothing, and each
  prints an "Event loop is closed" traceback (``sys.unraisablehook``, or
  ``sys.excepthook`` through tensorstore's ``PyErr_Print``) or an asyncio
  "Future exception was never retrieved" error. The same happens to the
  other writes of a failed save. The first error is
  reported (as one warning line); these echoes, and only these, are dropped.
  Installed before the first restore, for the rest of the process: they
  arrive later, from tensorstore's threads or the garbage collector.
  """
  if not _HOOKED:
    _HOOKED.update(unraisablehook=sys.unraisablehook, excepthook=sys.excepthook)
    sys.unraisablehook, sys.excepthook = _closed_loop_filters(sys.unraisablehook, sys.excepthook)
  logger = logging.getLogger("asyncio")
  if _READ_FILTER not in logger.filters:
    logger.addFilter(_READ_FILTER)
