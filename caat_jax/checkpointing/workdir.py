"""The run directory: checked before anything is written, held by one run at a time.

Two runs writing the same workdir would interleave ``metrics.jsonl`` and race
on checkpoints, so a run holds an exclusive lock on its workdir for its whole
life: ``fcntl.flock`` on ``WORKDIR/.lock``, a file that also records the
holder (host, pid, start time, command) so that a refused run can name it.
The kernel drops a flock when its holder dies, however it dies, so a lock
left behind by a killed run is taken over (with a warning naming it). Where
the filesystem has no flock, the record alone decides: a holder on this host
whose pid is gone is stale; one on another host is trusted.

Multi-host runs take the lock on process 0 only (the caller passes
``enabled=jax.process_index() == 0``): the others write through it.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not a directory, not writable, or in use."""


class WorkdirInUseError(WorkdirError):
  """The workdir is held by another run that is still going (``holder``: its record)."""

  def __init__(self, message: str, holder: dict):
    super().__init__(message)
    self.holder = holder
    self.holder_text = _describe(holder)


def check(path: str) -> str:
  """Makes sure ``path`` can hold a run; creates it if missing.

  Nothing in an existing directory is changed (a probe file is created and
  removed at once).

  Returns:
    The absolute path.
  Raises:
    WorkdirError: ``path`` is a file, cannot be created, or is not writable.
  """
  if not path:
    raise WorkdirError("--workdir is empty; pass a directory (it is created if missing).")
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(
      f"--workdir={path} is a file, not a directory; pass a directory (it is created if missing)."
    )
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f"cannot create --workdir={path}: {e.strerror or e} "
      f"({e.filename or path}); pass a directory you can write to."
    ) from e
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
      f"--workdir={path} is not writable ({e.strerror or e}); pass a directory you can write to."
    ) from e
  return path


def _read_holder(fd: int) -> dict:
  """The holder recorded in the lock file ({} if none or unreadable)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    holder = json.loads(data) if data.strip() else {}
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "another run (it recorded no details)"
  text = (
    f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
    f"running since {holder.get('since', '?')}"
  )
  if holder.get("command"):
    text += f": {holder['command']}"
  return text


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _in_use(path: str, holder: dict) -> WorkdirInUseError:
  return WorkdirInUseError(
    f"--workdir={path} is in use by {_describe(holder)}. One run per workdir: "
    "wait for it to finish, stop it, or pass another --workdir.",
    holder,
  )


@contextlib.contextmanager
def lock(path: str, enabled: bool = True) -> Iterator[None]:
  """Holds ``path`` for one run: ``with workdir.lock(FLAGS.workdir, enabled=...)``.

  Checks the directory (``check``), then takes the lock or raises
  ``WorkdirError`` naming the holder. On exit the record is cleared and the
  lock released; the (empty) lock file stays, so that a run starting at that
  moment cannot lock a file that is about to be deleted. The one exception:
  a run that fails before writing anything (a config error found once the
  data is loaded) removes the lock file it created and the directories
  ``check`` created, so a refused command leaves nothing behind (a second
  run racing for that brand-new, empty workdir is the only one that could
  see its lock file go).

  Args:
    path: the run's workdir (created if missing).
    enabled: False on processes other than 0 of a multi-host run: no-op.
  """
  if not enabled:
    yield
    return
  created = _missing(path)  # removed again if the run fails before writing anything
  path = check(path)
  lock_path = os.path.join(path, LOCK_FILE)
  new_lock = not os.path.lexists(lock_path)
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"cannot open the lock file {lock_path}: {e.strerror or e}") from e
  try:
    holder = _take(fd, path)
    if holder:
      logging.warning(
        "--workdir=%s: taking over the lock left by %s (that run has ended)",
        path,
        _describe(holder),
      )
    record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "since": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    try:
      yield
    except BaseException:
      # Refused before writing anything (a config error found once the data
      # is loaded, Ctrl-C while compiling): leave no workdir holding only
      # the lock. Removed while still held; a directory with anything else
      # in it is kept.
      if new_lock and os.listdir(path) == [LOCK_FILE]:
        with contextlib.suppress(OSError):
          os.remove(lock_path)
          for d in created:
            os.rmdir(d)
      raise
    finally:
      os.ftruncate(fd, 0)  # no record left: the next run starts without a warning
      with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def _missing(path: str) -> list[str]:
  """The directories ``check(path)`` would create, deepest first."""
  out, here = [], os.path.abspath(path)
  while not os.path.lexists(here):
    out.append(here)
    parent = os.path.dirname(here)
    if parent == here:
      break
    here = parent
  return out


def _take(fd: int, path: str) -> dict:
  """Takes the lock on ``fd``; returns a stale holder's record ({} if none).

  Raises WorkdirError if the holder is still running.
  """
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    flocked = True
  except BlockingIOError:
    raise _in_use(path, _read_holder(fd)) from None
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
      raise WorkdirError(f"cannot lock {os.path.join(path, LOCK_FILE)}: {e.strerror or e}") from e
    flocked = False  # a filesystem without flock: the record alone decides
  holder = _read_holder(fd)
  if not holder:
    return {}
  if flocked:
    # The kernel released the holder's flock: it has ended (or this very
    # process recorded it and left without clearing it).
    return holder
  same_host = holder.get("host") == socket.gethostname()
  pid = holder.get("pid")
  if same_host and isinstance(pid, int) and not _alive(pid):
    return holder
  raise _in_use(path, holder)
