"""Stopping at a step boundary when asked to: preemption notices and Ctrl-C.

Kept apart from ``manager`` (the package re-exports ``PreemptionWatcher``) so
each file stays readable; it needs nothing from it.
"""

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import jax

from caat_jax.checkpointing.errors import Preempted


class PreemptionWatcher:
  """Tells the trainer, at a step boundary, that it should save and stop.

  Single process: SIGTERM (schedulers send it some time before SIGKILL) and
  SIGINT (Ctrl-C) handlers set a flag; a second Ctrl-C stops at once
  (KeyboardInterrupt). Multi-process: every process must agree on the step
  at which all of them save, so JAX's preemption sync point is used
  (``CheckpointManager.reached_preemption``; JAX's coordination service
  listens for SIGTERM itself, and a Python handler would replace its own, so
  none is installed then, and Ctrl-C keeps its default). Use as a context
  manager: the previous handlers are restored on exit.

  Given the ``Checkpointer`` (rather than its manager), ``should_stop`` also
  raises a failed background save (``CheckpointSaveError``) at the step it
  is noticed.
  """

  def __init__(self, checkpointer: Any):
    """``checkpointer``: a ``checkpointing.Checkpointer`` or an orbax CheckpointManager."""
    if hasattr(checkpointer, "check_for_errors") and hasattr(checkpointer, "manager"):
      self._checkpointer, self._manager = checkpointer, checkpointer.manager
    else:
      self._checkpointer, self._manager = None, checkpointer
    self._signal: str | None = None
    self._previous: dict[int, Any] = {}
    self._stop_at_once: int | None = None  # the saved step, within ``stop_at_once``

  def __enter__(self) -> "PreemptionWatcher":
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        try:
          self._previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: the signal keeps its default
          pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
    # Only set a flag: the handler runs between Python bytecodes, possibly
    # while a step is dispatched or a save is in flight. Within
    # ``stop_at_once`` (nothing left to save) it stops there and then.
    if self._stop_at_once is not None:
      self._signal = signal.Signals(signum).name
      raise Preempted(self._stop_at_once, self._signal)
    if signum == signal.SIGINT:
      if self._signal == "SIGINT":  # asked twice: stop now, without saving
        signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT, signal.default_int_handler))
        raise KeyboardInterrupt
      print(
        "caat_jax: Ctrl-C: saving a checkpoint at the next step, then stopping "
        "(Ctrl-C again to stop at once, without saving).",
        file=sys.stderr,
        flush=True,
      )
    if self._signal is None or signum == signal.SIGINT:
      self._signal = signal.Signals(signum).name

  def should_stop(self, step: int) -> str | None:
    """The reason to stop at ``step`` (after it), or None. Call at every step."""
    if self._checkpointer is not None:
      self._checkpointer.check_for_errors()
    if self._signal:
      return self._signal
    # Collective on multi-host jobs: every process calls it at every step.
    if self._manager.reached_preemption(step):
      return "preemption notice"
    return None

  @contextlib.contextmanager
  def stop_at_once(self, step: int) -> Iterator[None]:
    """Within: SIGTERM or Ctrl-C raises ``Preempted(step, ...)`` at once.

    For work after the last checkpoint (``step``, committed) that a rerun
    redoes, such as the final evaluation (hours on ImageNet, which a
    scheduler will not wait for). A signal already noticed stops on entry.
    Single process only (multi-process runs install no handler).
    """
    if self._signal:
      raise Preempted(step, self._signal)
    self._stop_at_once = step
    try:
      yield
    finally:
      self._stop_at_once = None
