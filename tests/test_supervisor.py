"""The supervising parent of a multi-host process (caat_jax.supervisor): its
stderr filter on byte streams with a fake clock, and the fork itself with a
child that exits, is signalled, or aborts the way JAX's client does when the
coordinator is lost (no JAX backend, so these are fast)."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from caat_jax import multihost, supervisor
from tests.helpers import ROOT, subprocess_env

_W = b"W1203 14:27:57.684391   11781 preemption_sync_manager.cc:147] Failed to retrieve\n"
_MORE = b"Additional GRPC error information from remote target\n"
_F = b"F1203 14:27:57.684559   11781 client.h:80] " + supervisor.FATAL_MARKER + b". absl::Status\n"


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def _relay():
  out, clock = io.BytesIO(), _Clock()
  return supervisor.Relay(out, clock=clock), out, clock


def test_plain_output_and_progress_bars_pass_at_once():
  relay, out, _ = _relay()
  relay.feed(b"epoch 1\n\r 10%|#  | 4/40")  # tqdm redraws after "\r"
  assert out.getvalue() == b"epoch 1\n\r 10%|#  | 4/40"
  relay.feed(b"\r 20%|## | 8/40")
  assert out.getvalue().endswith(b"\r 20%|## | 8/40")
  # an open line that may become a C++ log line waits for its end; the rest
  # of a line whose start was relayed is not taken for one
  relay.feed(b"\nW1203 14:27:57.6")
  assert out.getvalue().endswith(b"8/40\n")
  relay.feed(b"84391 1178 x.py:1] Python's absl\n")
  assert out.getvalue().endswith(b"8/40\nW1203 14:27:57.684391 1178 x.py:1] Python's absl\n")
  relay.feed(b"loss 0.5 ")
  relay.feed(b"W1203 14:27:57.684391 1178 x.cc:1] mid-line, not a log line\n")
  assert out.getvalue().endswith(
    b"loss 0.5 W1203 14:27:57.684391 1178 x.cc:1] mid-line, not a log line\n"
  )


def test_cpp_log_lines_are_held_then_relayed_with_their_continuations():
  relay, out, clock = _relay()
  relay.feed(_W + _MORE)
  assert out.getvalue() == b""
  clock.t = supervisor.HOLD_S - 0.01
  relay.tick()
  assert out.getvalue() == b""
  clock.t = supervisor.HOLD_S
  relay.tick()
  assert out.getvalue() == _W + _MORE
  assert not relay.fatal
  relay.feed(b"I1203 14:00:00.000001 140 checkpoint.py:12] a Python absl line\n")
  assert out.getvalue().endswith(b"a Python absl line\n")  # .py lines are not held


def test_the_fatal_line_drops_what_was_held_and_everything_after():
  relay, out, _ = _relay()
  relay.feed(b"step 20\n" + _W + _MORE)
  relay.feed(_F + b"*** Check failure stack trace: ***\nFatal Python error: Aborted\n")
  relay.feed(b"Thread 0x00007 (most recent call first):\n  File")
  relay.close()
  assert relay.fatal
  assert out.getvalue() == b"step 20\n"


def test_the_childs_own_peer_lost_line_is_noticed_in_pieces_too():
  relay, _, _ = _relay()
  line = supervisor.coordinator_lost_message(1, 2).encode()
  relay.feed(line)  # Python writes the text, then its newline
  relay.feed(b"\n")
  assert relay.peer_line


def test_the_marker_counts_only_in_jaxs_own_fatal_line():
  relay, out, _ = _relay()
  relay.feed(b"a user printed: " + supervisor.FATAL_MARKER + b"\nstep 21\n")
  assert not relay.fatal and out.getvalue().endswith(b"step 21\n")


def test_close_relays_held_lines_and_an_unterminated_tail():
  relay, out, _ = _relay()
  relay.feed(_W + b"no newline at the end")
  relay.close()
  assert out.getvalue() == _W + b"no newline at the end"


def test_the_coordinator_lost_line():
  line = supervisor.coordinator_lost_message(1, 2)
  assert line.startswith("caat_jax: process 1 of 2: the coordinator (process 0) of this")
  assert "\n" not in line
  assert supervisor.coordinator_lost_message(None, None).startswith("caat_jax: a process: ")


_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from caat_jax import supervisor
    # Ctrl-C's default, whatever was inherited (xdist workers ignore SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    supervisor.fork_and_relay()
    mode = sys.argv[1]
    supervisor.report(1, 2)
    if mode == "exit":
      print("child output", file=sys.stderr)
      sys.exit(3)
    if mode in ("abort", "abort_after_own_line"):
      if mode == "abort_after_own_line":
        print(%r, file=sys.stderr, flush=True)
      sys.stderr.buffer.write(%r + %r)
      sys.stderr.flush()
      os.abort()
    if mode == "marker_then_exit":
      sys.stderr.buffer.write(%r)
      sys.stderr.flush()
      sys.exit(0)
    if mode == "heir":  # a process it started outlives it, holding its stderr
      import subprocess
      subprocess.Popen(["sleep", "30"])
      sys.exit(3)
    if mode == "wait":
      print("ready", os.getpid(), os.getppid(), file=sys.stderr, flush=True)
      time.sleep(60)
""") % (supervisor.coordinator_lost_message(1, 2), _W, _F, _F)


def _start(mode):
  return subprocess.Popen(
    [sys.executable, "-c", _CHILD, mode],
    cwd=ROOT,
    env=subprocess_env(1),
    stderr=subprocess.PIPE,
    start_new_session=True,  # its own process group, as under a terminal
  )


def test_the_parent_exits_as_the_child_did():
  proc = _start("exit")
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 3
  assert err == b"child output\n"


@pytest.mark.parametrize("mode", ["abort", "abort_after_own_line"])
def test_an_abort_on_the_coordinators_loss_becomes_one_line_and_75(mode):
  proc = _start(mode)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == multihost.EXIT_PEER_LOST
  assert err.decode() == supervisor.coordinator_lost_message(1, 2) + "\n"


def test_the_fatal_line_without_an_abort_keeps_the_childs_status():
  proc = _start("marker_then_exit")
  proc.communicate(timeout=60)
  assert proc.returncode == 0


def test_a_process_the_child_started_does_not_hold_the_parent():
  t = time.monotonic()
  proc = _start("heir")
  proc.communicate(timeout=60)
  assert proc.returncode == 3
  assert time.monotonic() - t < 20  # not the heir's 30 s


@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_reaches_the_child_and_the_parent_ends_by_it(to_group):
  """A scheduler signals the pid it started (forwarded) or the whole group."""
  proc = _start("wait")
  child = _ready(proc)
  (os.killpg if to_group else os.kill)(proc.pid, signal.SIGTERM)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGTERM
  assert not _alive(child)


def test_ctrl_c_and_job_control_reach_the_child_directly():
  """One process group: a terminal's Ctrl-C (and Ctrl-Z, and reads from it)
  reach the child as they would an unsupervised process; the parent ignores
  Ctrl-C and ends as the child did."""
  proc = _start("wait")
  child = _ready(proc)
  assert os.getpgid(child) == os.getpgid(proc.pid)
  os.kill(proc.pid, signal.SIGINT)  # the parent alone: ignored
  time.sleep(0.5)
  assert proc.poll() is None and _alive(child)
  os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGINT  # KeyboardInterrupt, uncaught


def test_the_child_dies_with_its_parent():
  proc = _start("wait")
  child = _ready(proc)
  proc.kill()
  proc.wait(timeout=60)
  deadline = time.monotonic() + 10
  while _alive(child) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not _alive(child)


def _ready(proc):
  """The child's pid, from its first line (it is the job, the parent's child)."""
  word, pid, ppid = proc.stderr.readline().split()
  assert word == b"ready" and int(ppid) == proc.pid and int(pid) != proc.pid
  return int(pid)


def _alive(pid):
  """Whether ``pid`` still runs (a zombie, ended but not yet reaped, has not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:  # no /proc: ask the kernel
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True
