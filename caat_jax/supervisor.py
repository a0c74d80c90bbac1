"""A small parent process for each process of a multi-host job, so that losing
the coordinator ends in one line and a status a scheduler can act on.

When process 0 (which hosts JAX's coordination service) dies, JAX's client in
every other process aborts from C++ at once (``LOG(FATAL)`` in its error
callback: SIGABRT, a page of log lines and a Python fault dump) before any
Python code of ours can run, and the hook JAX offers
(``missed_heartbeat_callback``) cannot take a Python function in this JAX
(0.10.2: ``std::bad_cast``). So ``main`` forks once, before JAX touches a
device (``fork_and_relay``):

* the child runs the job as before; its stderr goes through a pipe to the
  parent, and it tells the parent its process index and count once joined
  (``report``); it dies with the parent (``PR_SET_PDEATHSIG`` on Linux, a
  polling thread elsewhere);
* the parent relays the child's stderr as it comes and ends as the child
  ended: the same exit status, or killed by the same signal. Both stay in
  one process group, so a terminal's Ctrl-C, Ctrl-Z and reads from it reach
  the child directly (the parent ignores SIGINT); SIGTERM, SIGHUP and
  SIGUSR1/2 sent to the parent alone (a scheduler signalling the pid it
  started) are forwarded (one sent to the whole group then arrives twice,
  which JAX's preemption notice, a flag, does not mind);
* when the child dies by SIGABRT after JAX's fatal C++ line "Terminating
  process because the JAX distributed service detected fatal errors", the
  parent drops that line, the C++ log lines held just before it and the
  fault dump after it, prints ``multihost.peer_lost_message`` naming the
  coordinator (unless the child already printed its own peer-lost line),
  and exits ``multihost.EXIT_PEER_LOST`` (75) like any other lost peer.

C++ log lines (``W1203 14:27:57.684391 11781 file.cc:147] ...`` and the lines
that continue them) are held for up to ``HOLD_S`` before they are relayed, so
that the warnings JAX logs in the same millisecond as its fatal line can be
dropped with it; everything else passes at once.
"""

import ctypes
import logging
import os
import re
import select
import signal
import sys
import threading
import time

from caat_jax import multihost

# JAX's client, when the coordination service reports an error (client.h).
FATAL_MARKER = b"Terminating process because the JAX distributed service detected fatal errors"
# An absl log line written by C++ code: level, date, time, thread, file.cc/.h:line].
_CPP_LOG = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.\-/]+\.(?:cc|h|cpp):\d+\]")
_CPP_START = re.compile(rb"^[IWEF]\d{0,4}(?: |$)")  # what may still become such a line
HOLD_S = 1.0
DRAIN_S = 2.0  # after the child ends: how long its heirs' output is still relayed
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_PEER_LOST = multihost.PEER_LOST_TEXT.encode()

_status_fd: int | None = None  # the child's end of the status pipe


def report(index: int, count: int) -> None:
  """In the child, once joined: tells the parent which process it is (no-op
  when not supervised)."""
  global _status_fd  # pylint: disable=global-statement
  if _status_fd is None:
    return
  try:
    os.write(_status_fd, f"{index} {count}\n".encode())
    os.close(_status_fd)
  except OSError:
    pass
  _status_fd = None


def _die_with_parent(parent: int) -> None:
  """The child ends when the parent does (a scheduler's SIGKILL of the
  parent must not leave the job running unsupervised)."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG: Linux
      return
  except (OSError, AttributeError):
    pass

  def watch():  # elsewhere: poll
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(multihost.EXIT_PEER_LOST)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="caat_parent_watch", daemon=True).start()


def fork_and_relay() -> None:
  """Forks; returns in the child only. The parent relays and exits as the
  child did (see the module docstring). Must run before JAX initialises a
  backend (JAX refuses to be forked after)."""
  global _status_fd  # pylint: disable=global-statement
  if not hasattr(os, "fork"):
    return
  if threading.active_count() > 1:  # forking a threaded process is unsafe
    logging.warning("caat_jax.supervisor: threads running before fork; running unsupervised")
    return
  sys.stdout.flush()
  sys.stderr.flush()
  err_r, err_w = os.pipe()
  status_r, status_w = os.pipe()
  parent = os.getpid()
  # Held until the parent's handlers are in place (and the child's restored).
  blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, signal.SIGINT))
  pid = os.fork()
  if pid == 0:  # the child: runs the job
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(err_r)
    os.close(status_r)
    os.dup2(err_w, 2)
    os.close(err_w)
    _status_fd = status_w
    _die_with_parent(parent)
    if os.getppid() != parent:  # the parent died before prctl took effect
      os._exit(multihost.EXIT_PEER_LOST)  # pylint: disable=protected-access
    return
  try:
    os.close(err_w)
    os.close(status_w)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's reaches the child
    for sig in FORWARDED:
      signal.signal(sig, lambda s, _f: _forward(pid, s))
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    relay = Relay(_Stderr())
    who, status = _relay_until_exit(pid, err_r, status_r, relay)
    _exit_like(status, relay, who)
  except BaseException as e:  # pylint: disable=broad-except
    # Never back into main: the child runs the job, the parent only ends.
    try:
      os.write(2, f"caat_jax.supervisor: {type(e).__name__}: {e}\n".encode(errors="replace"))
    finally:
      os._exit(1)  # pylint: disable=protected-access


class _Stderr:
  """fd 2, written directly (sys.stderr may be replaced or closed)."""

  @staticmethod
  def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
      view = view[os.write(2, view) :]

  @staticmethod
  def flush() -> None:
    pass


def _forward(pid: int, sig: int) -> None:
  try:
    os.kill(pid, sig)
  except ProcessLookupError:
    pass


class Relay:
  """The parent's filter of the child's stderr (bytes in, bytes out)."""

  def __init__(self, out, clock=time.monotonic):
    self.out = out
    self.clock = clock
    self.fatal = False  # JAX's fatal coordinator-lost line was seen
    self.peer_line = False  # the child printed its own peer-lost line
    self.at_line_start = True  # whether the last byte relayed ended a line
    self._partial = b""
    self._mid_line = False  # the start of the current line was relayed already
    self._held: list[bytes] = []
    self._held_since = 0.0

  def feed(self, data: bytes) -> None:
    buf, pos = self._partial + data, 0
    while True:
      ends = [i for i in (buf.find(b"\n", pos), buf.find(b"\r", pos)) if i >= 0]
      if not ends:
        break
      cut = min(ends) + 1
      self._segment(buf[pos:cut])
      pos = cut
    self._partial = buf[pos:]
    # An open line (a progress bar redrawn after "\r") is relayed at once
    # unless it may be the start of a C++ log line.
    if self._partial and not self.fatal and not self._held:
      if self._mid_line or not _CPP_START.match(self._partial):
        self.peer_line = self.peer_line or _PEER_LOST in self._partial
        self._write(self._partial)
        self._partial, self._mid_line = b"", True
    self.tick()

  def _segment(self, segment: bytes) -> None:
    mid, self._mid_line = self._mid_line, False
    if self.fatal:
      return
    self.peer_line = self.peer_line or _PEER_LOST in segment
    cpp_log = not mid and _CPP_LOG.match(segment)
    if cpp_log and FATAL_MARKER in segment:
      self.fatal, self._held = True, []
    elif cpp_log or (self._held and not mid):
      if not self._held:
        self._held_since = self.clock()
      self._held.append(segment)
    else:
      self._write(segment)

  def tick(self) -> None:
    """Relays held C++ log lines once they are ``HOLD_S`` old."""
    if self._held and self.clock() - self._held_since >= HOLD_S:
      self._flush_held()

  def _flush_held(self) -> None:
    held, self._held = self._held, []
    self._write(b"".join(held))

  def close(self) -> None:
    """At the child's end: what is held or unterminated, unless fatal."""
    if not self.fatal:
      self._flush_held()
      if self._partial:
        self._write(self._partial)
    self._partial = b""

  def _write(self, data: bytes) -> None:
    if not data:
      return
    try:
      self.out.write(data)
      self.out.flush()
      self.at_line_start = data.endswith(b"\n")
    except (OSError, ValueError):
      pass  # our own stderr is gone: keep draining the child's


def _relay_until_exit(pid: int, err_r: int, status_r: int, relay: Relay):
  """Relays until the child has exited and its stderr is closed (or, if a
  process it started still holds the pipe, ``DRAIN_S`` after its exit).
  Returns ((index, count) or None, the child's wait status)."""
  who, status, deadline = None, None, None
  fds = [err_r, status_r]
  while err_r in fds and (deadline is None or time.monotonic() < deadline):
    try:
      ready, _, _ = select.select(fds, [], [], 0.2)
    except InterruptedError:
      continue
    for fd in ready:
      data = os.read(fd, 65536)
      if fd == status_r:
        parts = data.split()
        if len(parts) >= 2:
          who = (int(parts[0]), int(parts[1]))
        if not data:
          fds.remove(fd)
      elif data:
        relay.feed(data)
      else:
        fds.remove(fd)
    relay.tick()
    if status is None:
      done, st = os.waitpid(pid, os.WNOHANG)
      if done:
        status, deadline = st, time.monotonic() + DRAIN_S
  relay.close()
  if status is None:
    _, status = os.waitpid(pid, 0)
  return who, status


def _exit_like(status: int, relay: Relay, who: tuple[int, int] | None) -> None:
  aborted = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
  if relay.fatal and aborted:
    if not relay.peer_line:
      index, count = who if who else (None, None)
      line = coordinator_lost_message(index, count) + "\n"
      relay.out.write((line if relay.at_line_start else "\n" + line).encode(errors="replace"))
    os._exit(multihost.EXIT_PEER_LOST)  # pylint: disable=protected-access
  sys.stdout.flush()
  if os.WIFSIGNALED(status):  # killed: the parent ends by the same signal
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (sig,))
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # pylint: disable=protected-access  # a signal that does not end a process
  os._exit(os.waitstatus_to_exitcode(status))  # pylint: disable=protected-access


def coordinator_lost_message(index: int | None, count: int | None) -> str:
  """The one line of a process that lost the coordination service (None:
  the child never said which process it is)."""
  return multihost.peer_lost_message([] if index == 0 else [0], index=index, count=count)
