"""Orbax checkpoints of the whole train state, plus the run's config.

A checkpoint holds ``flax.serialization.to_state_dict(state)`` (classifier,
BatchNorm statistics, every optimiser state, method state, RNG key, step) and
the config as JSON. The position in the data order is a function of the step
(the epoch's permutation is keyed by (seed, epoch)), so resuming from step s
continues exactly where the run stopped.

Bad state is handled here, never by starting afresh in silence:

* an unreadable newest checkpoint (truncated, half-written) is moved aside
  with a warning and the next older one is used; if checkpoints exist but
  none is readable, ``CheckpointError`` is raised;
* a stored config that differs from the current one in a key that changes
  the computation raises ``IncompatibleConfigError`` naming every such key,
  unless the caller allows the change explicitly;
* preemption (SIGTERM, or JAX's preemption sync point on multi-host jobs) is
  noticed at a step boundary by ``PreemptionWatcher``; the trainer then saves
  and raises ``Preempted``.
"""

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any

# Config keys that may differ between a checkpoint and the run resuming from
# it: they change what is logged, evaluated or saved, where data is read
# from, or how the (device-count invariant, DESIGN convention 8) step is
# distributed, but not the training trajectory. A key matches an entry if it
# equals it or lies below it ("eval" covers "eval.attacks").
SAFE_TO_CHANGE = (
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval", "eval_every", "bench", "parallel", "suite", "init_from",
    "data.data_dir",
)

# Exit status of a job that saved and stopped because it was told it would be
# preempted: 128 + SIGTERM, what a shell reports for a process ended by
# SIGTERM, so schedulers and launch scripts treat it as "terminated, restart
# me" rather than as success (0) or as a crash (1).
EXIT_PREEMPTED = 128 + signal.SIGTERM


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


class IncompatibleConfigError(ValueError):
  """The config differs from the checkpoint's in keys that change the run."""


class Preempted(Exception):
  """The job saved a checkpoint at ``step`` and stopped for a preemption."""

  def __init__(self, step: int, reason: str):
    super().__init__(
        f"preempted ({reason}): saved a checkpoint at step {step} and stopped; "
        "run the same command again to resume.")
    self.step = step


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dict (a config as JSON) -> {'a.b.c': leaf}."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (tuples become lists), as it is stored."""
  return json.loads(config.to_json_best_effort())


def config_differences(stored: dict, current: dict,
                       safe: Iterable[str] = SAFE_TO_CHANGE) -> list[tuple[str, Any, Any]]:
  """Keys whose values differ and matter: [(key, stored value, current value)].

  A key present in only one of the configs counts as differing (None on the
  other side), unless it is safe to change.
  """
  old, new = flatten_config(stored), flatten_config(current)
  safe = tuple(safe)
  diffs = []
  for key in sorted(set(old) | set(new)):
    if any(key == s or key.startswith(s + ".") for s in safe):
      continue
    if old.get(key) != new.get(key):
      diffs.append((key, old.get(key), new.get(key)))
  return diffs


def check_config_compatible(stored: dict, config: ml_collections.ConfigDict, step: int,
                            directory: str, allow_change: bool) -> None:
  """Raises ``IncompatibleConfigError`` listing differing keys (unless allowed)."""
  diffs = config_differences(stored, config_as_json(config))
  if not diffs:
    return
  lines = "\n".join(f"  {k}: checkpoint {o!r} -> now {n!r}" for k, o, n in diffs)
  if allow_change:
    logging.warning("resuming from step %d with a changed config "
                    "(--allow_config_change):\n%s", step, lines)
    return
  raise IncompatibleConfigError(
      f"the checkpoint at step {step} in {directory} was written with a different "
      f"config; these keys differ:\n{lines}\n"
      "Use the original values, another --workdir, or pass --allow_config_change "
      "to resume anyway.")


class Checkpointer:
  """Saves every ``save_every`` steps (and on demand), keeps the last ``keep``.

  Saves are asynchronous: ``save`` returns once the state is copied to the
  host, and orbax writes in the background to a temporary directory that is
  renamed to the step's directory when complete, so a process killed mid-write
  leaves no step directory that looks finished.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: PyTree, config: ml_collections.ConfigDict,
           *, force: bool = False) -> bool:
    """Saves the (single-copy, unreplicated) ``state`` as step ``step``.

    Leaves are written as host numpy arrays: every process holds the same
    replicated values, so the primary process writes them once, whatever
    the device layout (a pmap-stacked or globally sharded array would tie
    the checkpoint to the device count). Returns whether a save started
    (False if ``step`` is already saved).
    """
    if step in self.manager.all_steps():
      return False
    state_dict = jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_dict),
            config=ocp.args.JsonSave(config_as_json(config))),
        force=force)

  def restore(self, template: PyTree, step: int | None = None, *,
              config: ml_collections.ConfigDict | None = None,
              allow_config_change: bool = False,
              move_aside: bool = True) -> tuple[PyTree, int] | None:
    """The newest readable checkpoint (or ``step``), as a pytree like ``template``.

    A checkpoint that fails to read (truncated, half-written) is skipped with
    a warning and the next older one is tried; the unreadable ones are then
    moved to ``<directory>_unreadable/`` so that new saves at those steps are
    not blocked by them. If checkpoints exist but none can be read this raises
    ``CheckpointError`` rather than silently starting afresh.

    Args:
      template: a state with the expected structure, shapes and dtypes.
      step: restore exactly this step (no fallback).
      config: if given, the checkpoint's stored config must match it except
        in ``SAFE_TO_CHANGE`` keys, or ``IncompatibleConfigError`` is raised.
      allow_config_change: only warn about config differences.
      move_aside: move unreadable newer steps aside (False when reading
        another run's checkpoints, e.g. ``init_from``).
    Returns:
      (state, step), or None when the directory holds no checkpoint.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      return None
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        flax.serialization.to_state_dict(template))
    errors, unreadable = [], []
    for s in steps:
      try:
        # The config is read first and on its own: a changed model would make
        # the state fail to read, and that must surface as a config error,
        # not as a corrupt checkpoint.
        stored = self.restore_config(s) if config is not None else None
      except Exception as e:  # pylint: disable=broad-except
        stored, err = None, e
      else:
        err = None
      if err is None:
        if stored is not None:
          check_config_compatible(stored, config, s, self.directory, allow_config_change)
        try:
          restored = self.manager.restore(
              s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
          state = flax.serialization.from_state_dict(template, restored["state"])
        except Exception as e:  # pylint: disable=broad-except
          err = e
      if err is None:
        if unreadable and move_aside:
          self._move_aside(unreadable)
        return state, s
      logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                      s, self.directory, type(err).__name__, err)
      errors.append(f"step {s}: {type(err).__name__}: {err}")
      unreadable.append(s)
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} (tried steps {steps}); "
        "refusing to start afresh over existing checkpoints. Move the directory "
        "away to start a new run. Errors: " + "; ".join(errors))

  def restore_config(self, step: int) -> dict:
    """The config stored with ``step``, as a JSON dict."""
    return self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories out of the manager's sight.

    Kept (not deleted) for inspection. Process 0 moves them, everyone waits,
    and every manager re-reads the directory.
    """
    if jax.process_index() == 0:
      aside = self.directory.rstrip("/") + "_unreadable"
      os.makedirs(aside, exist_ok=True)
      for s in steps:
        src = os.path.join(self.directory, str(s))
        if os.path.exists(src):
          dst = os.path.join(aside, f"{s}.{int(time.time())}")
          shutil.move(src, dst)
          logging.warning("moved unreadable checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("caat_jax:checkpoint_move_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class PreemptionWatcher:
  """Tells the trainer, at a step boundary, that it should save and stop.

  Single process: a SIGTERM handler sets a flag (schedulers send SIGTERM
  some time before SIGKILL). Multi-process: every process must agree on the
  step at which all of them save, so JAX's preemption sync point is used
  (``CheckpointManager.reached_preemption``; JAX's coordination service
  listens for SIGTERM itself, and a Python handler would replace its own, so
  none is installed then). Use as a context manager: the previous SIGTERM
  handler is restored on exit.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._signalled = False
    self._previous = None

  def __enter__(self) -> "PreemptionWatcher":
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      except ValueError:  # not the main thread: SIGTERM keeps its default
        self._previous = None
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:  # pylint: disable=unused-argument
    # Only set a flag: the handler runs between Python bytecodes, possibly
    # while a step is dispatched or a save is in flight.
    self._signalled = True

  def should_stop(self, step: int) -> str | None:
    """The reason to stop at ``step`` (after it), or None. Call at every step."""
    if self._signalled:
      return "SIGTERM"
    # Collective on multi-host jobs: every process calls it at every step.
    if self._manager.reached_preemption(step):
      return "preemption notice"
    return None


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def resolve_directory(path: str) -> str:
  """The orbax directory of ``path``: a run workdir (its checkpoints/) or
  the checkpoint directory itself. Raises FileNotFoundError otherwise."""
  if os.path.isdir(checkpoint_dir(path)):
    return checkpoint_dir(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint directory at {path!r}")
  return path


def load_variables(path: str, template_state: PyTree) -> dict[str, PyTree]:
  """Classifier variables from a run workdir or its checkpoint directory.

  For ``config.init_from`` (e.g. a PGD-AT hot start): only ``params`` and
  ``batch_stats`` are taken; optimiser and method state start fresh.
  """
  try:
    directory = resolve_directory(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.init_from={path!r}: {e}") from e
  ckpt = Checkpointer(directory, async_save=False)
  try:
    got = ckpt.restore(template_state, move_aside=False)
  finally:
    ckpt.close()
  if got is None:
    raise FileNotFoundError(f"config.init_from={path!r}: no checkpoint in {directory}")
  state, _ = got
  return {"params": state.params, "batch_stats": state.batch_stats}
