"""Faults on many hosts: bounded waits, and one line naming what went wrong.

A multi-host run (a TPU pod, several GPU nodes) is one job of N processes
joined through JAX's coordination service (``jax.distributed``). This module
sets that service's timeouts from the config and turns what it reports into
the job's exit status:

* ``parallel.init_timeout_s``: how long a process waits at start-up for the
  others to join (``jax.distributed.initialize(initialization_timeout=)``);
* ``parallel.heartbeat_timeout_s``: after how long without a heartbeat a
  process is declared dead (``heartbeat_timeout_seconds``); the survivors then
  stop instead of waiting for ever in the next collective;
* ``parallel.shutdown_timeout_s``: how long a finishing process waits for the
  others at the shutdown barrier (``shutdown_timeout_seconds``).

A process that finds a peer lost exits with ``EXIT_PEER_LOST`` (75,
``EX_TEMPFAIL``: "try again"; the job resumes from its last checkpoint when
rerun). docs/running.md, "Many hosts: faults and exit codes", says what a
scheduler sees in each case.
"""

import logging
import os
import sys
import threading
import time

import jax

# Exit status of a process that stopped because another process of the job
# was lost: BSD's EX_TEMPFAIL ("temporary failure, try again"). Rerunning
# every process resumes from the last checkpoint.
EXIT_PEER_LOST = 75

TIMEOUT_KEYS = ("init_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s")
_DEFAULTS = {"init_timeout_s": 300, "heartbeat_timeout_s": 60, "shutdown_timeout_s": 60}


def timeouts(cfg) -> dict[str, int]:
  """The three coordination timeouts of the ``parallel`` config block, in
  seconds (a config without them gets the defaults)."""
  return {k: int(cfg.get(k, _DEFAULTS[k])) for k in TIMEOUT_KEYS}


def validate(cfg) -> None:
  """Raises ValueError naming ``config.parallel.<key>`` for a bad timeout.

  Each must be a whole number of seconds >= 1 (at most a day: a larger value
  is a typo, and would make a lost host hang the job for as long).
  """
  for key in TIMEOUT_KEYS:
    value = cfg.get(key, _DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 86400:
      raise ValueError(
        f"config.parallel.{key}={value!r} is not valid: a whole number of seconds from 1 to 86400."
      )


def initialize_kwargs(cfg) -> dict[str, int]:
  """The timeout arguments of ``jax.distributed.initialize`` from the config."""
  t = timeouts(cfg)
  return {
    "initialization_timeout": t["init_timeout_s"],
    "heartbeat_timeout_seconds": t["heartbeat_timeout_s"],
    "shutdown_timeout_seconds": t["shutdown_timeout_s"],
  }


def prepare() -> None:
  """Before ``jax.distributed.initialize``: the coordination service keeps
  running when a process is lost (``jax_enable_recoverability``), so that the
  survivors are told by ``PeerWatch`` (one line, exit 75) instead of being
  aborted by the service's C++ error handler (exit 134 and a stack of log
  lines). With it the service's own shutdown barrier no longer holds a
  finished process back: ``guarded`` waits at its own.
  """
  jax.config.update("jax_enable_recoverability", True)
  # orbax warns at every preemption sync point, once per thread and process;
  # the trainer says what happens in one line of its own.
  logger = logging.getLogger("absl")
  if _SYNC_POINT_FILTER not in logger.filters:
    logger.addFilter(_SYNC_POINT_FILTER)


class _DropSyncPointWarnings(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "Reached preemption sync point" not in str(record.msg)


_SYNC_POINT_FILTER = _DropSyncPointWarnings()


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return distributed.global_state.client


def lost_processes() -> list[int]:
  """Ids of the processes the coordination service no longer sees alive
  (empty when it cannot be asked, e.g. the coordinator itself is gone)."""
  client = _client()
  if client is None:
    return []
  try:
    live = client.get_live_nodes(list(range(jax.process_count())))
  except Exception:  # pylint: disable=broad-except
    return []
  return sorted(set(range(jax.process_count())) - set(live))


PEER_LOST_TEXT = "of this multi-host job stopped responding"


def peer_lost_message(
  lost: list[int] | None = None, index: int | None = None, count: int | None = None
) -> str:
  """The one line printed when another process of the job is gone.

  ``index``/``count``: this process's place in the job (default: JAX's; the
  supervising parent, which has no JAX backend, passes them or None when the
  child never joined, and the line then says "a process").
  """
  lost = lost_processes() if lost is None else lost
  if lost == [0]:
    who = "the coordinator (process 0)"
  elif lost:
    who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}"
  else:
    who = "another process (or the coordinator, process 0)"
  if index is None and count is None and _client() is not None:
    index, count = jax.process_index(), jax.process_count()
  me = f"process {index} of {count}" if index is not None else "a process"
  return (
    f"caat_jax: {me}: {who} {PEER_LOST_TEXT} (killed, or its host failed); stopping. "
    "Run every process again to resume from the last checkpoint."
  )


_EXITING = threading.Lock()  # one line, from whichever thread notices first


def exit_peer_lost(lost: list[int] | None = None) -> None:
  """Prints the peer-lost line and ends this process at once with status 75.

  ``os._exit``: a normal exit would run JAX's shutdown barrier (waiting for
  the dead peer) and join orbax's background threads, which may be waiting
  for it too.
  """
  if not _EXITING.acquire(blocking=False):  # another thread is ending the process
    while True:
      time.sleep(1.0)
  try:
    # Process 0's progress bar leaves its line open: start a new one.
    sys.stderr.write(("\n" if jax.process_index() == 0 else "") + peer_lost_message(lost) + "\n")
    sys.stderr.flush()
  finally:
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access


class PeerWatch:
  """Watches the other processes in a background thread; when one is lost,
  prints one line naming it and exits 75 (``exit_peer_lost``).

  Without it a survivor would block in the next collective with the lost
  process, or fail in it with a traceback (the service, made recoverable by
  ``prepare``, no longer aborts it). The watch polls ``get_live_nodes`` every ``period``
  seconds, so it reacts within about ``period`` of the service marking a
  process dead (the heartbeat timeout after a kill, at once after a clean
  disconnect).
  """

  def __init__(self, period: float = 2.0):
    self.period = period
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "PeerWatch":
    if jax.process_count() > 1 and _client() is not None:
      self._thread = threading.Thread(target=self._run, name="caat_peer_watch", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()

  def _run(self) -> None:
    while not self._stop.wait(self.period):
      client = _client()
      if client is None:
        return
      lost = _lost_processes(client)
      if lost is None:
        if self._stop.is_set():
          return
        exit_peer_lost([])  # the coordinator itself is unreachable
        return
      if lost and not self._stop.is_set():
        exit_peer_lost(lost)
        return


_watch: PeerWatch | None = None
_error_wait_s = _DEFAULTS["heartbeat_timeout_s"] + 10
_shutdown_s = _DEFAULTS["shutdown_timeout_s"]


def start_watch(cfg) -> None:
  """After ``jax.distributed.initialize``: watch the other processes
  (``PeerWatch``) until ``guarded``'s function returns."""
  global _watch, _error_wait_s, _shutdown_s  # pylint: disable=global-statement
  _error_wait_s = timeouts(cfg)["heartbeat_timeout_s"] + 10
  _shutdown_s = timeouts(cfg)["shutdown_timeout_s"]
  if _watch is None:
    _watch = PeerWatch().__enter__()


def stop_watch(disconnect: bool = True) -> None:
  """Stops the peer watch, then waits (at most ``shutdown_timeout_s``) for
  every other process to get here: a process done with its part must not
  leave while the others still work, or they would take it for lost."""
  global _watch  # pylint: disable=global-statement
  if _watch is None:
    return
  _watch.__exit__()
  _watch = None
  client = _client()
  if client is None:
    return
  try:
    client.wait_at_barrier("caat_jax_exit", _shutdown_s * 1000)
  except Exception:  # pylint: disable=broad-except
    pass  # a peer gone or late: this process has finished its part
  leave_in_order(disconnect=disconnect)


def leave_in_order(timeout_s: float | None = None, disconnect: bool = True) -> None:
  """Disconnects from the coordination service, the coordinator last.

  A process still connected when the coordinator (process 0, which hosts
  the service) exits is aborted by JAX's client (exit 134). So every other
  process disconnects now (``disconnect``; else the caller ends it at once,
  and the service notices within the heartbeat timeout), and process 0
  waits (at most ``timeout_s``, default ``shutdown_timeout_s``, or the
  heartbeat timeout for a process that did not disconnect) until the
  service sees none of them.
  """
  client = _client()
  if client is None:
    return
  if jax.process_index() != 0:
    if not disconnect:
      return
    try:
      jax.distributed.shutdown()
    except Exception:  # pylint: disable=broad-except
      pass
    return
  everyone = list(range(jax.process_count()))
  deadline = time.monotonic() + (_shutdown_s if timeout_s is None else timeout_s)
  while time.monotonic() < deadline:
    try:  # the asking process must be in the list; returns once all alive asked
      if set(client.get_live_nodes(everyone)) <= {0}:
        return
    except Exception:  # pylint: disable=broad-except
      return
    time.sleep(0.1)


def guarded(fn):
  """``fn`` (a command's ``main``) with the peer watch stopped when it ends
  (a process done with its part must not report the others' exit as a
  loss), and an error that a lost peer caused (a collective failing because
  the other end is gone) reported as that loss: one line, exit 75.

  Such an error can come before the coordination service has declared the
  peer dead, so up to the heartbeat timeout (plus 10 s) is waited for it to
  do so; an error with every peer alive is raised as it was.
  """

  def run(*args, **kwargs):
    try:
      result = fn(*args, **kwargs)
    except (SystemExit, KeyboardInterrupt):
      stop_watch()
      raise
    except BaseException:
      if _watch is not None:
        _wait_for_loss(_error_wait_s)
      stop_watch()
      raise
    stop_watch()
    return result

  return run


def _lost_processes(client) -> list[int] | None:
  """The processes the coordination service no longer counts alive, or None
  when the service itself cannot be asked (the coordinator is gone)."""
  everyone = list(range(jax.process_count()))
  try:
    live = client.get_live_nodes(everyone)
  except Exception:  # pylint: disable=broad-except
    return None
  return sorted(set(everyone) - set(live))


def _wait_for_loss(seconds: float) -> None:
  """Exits 75 (``exit_peer_lost``) if a peer is, or within ``seconds``
  becomes, lost; returns otherwise."""
  deadline = time.monotonic() + seconds
  while True:
    client = _client()
    if client is None:
      return
    lost = _lost_processes(client)
    if lost is None:
      exit_peer_lost([])  # the coordinator itself is unreachable
    if lost:
      exit_peer_lost(lost)
    if time.monotonic() > deadline:
      return
    time.sleep(1.0)
