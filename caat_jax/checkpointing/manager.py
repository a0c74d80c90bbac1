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
* a checkpoint whose parameters have other shapes or dtypes than the
  current config builds raises ``IncompatibleConfigError`` listing them, even
  when config changes are allowed;
* a save that fails (disk full) raises ``CheckpointSaveError`` naming the
  step, the path and the free space; older checkpoints are kept and the
  half-written temporary directory is removed;
* preemption (SIGTERM, or JAX's preemption sync point on multi-host jobs) and
  Ctrl-C (SIGINT) are noticed at a step boundary by ``PreemptionWatcher``;
  the trainer then saves and raises ``Preempted``.
"""

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path as _epath
from jax.experimental import multihost_utils

# The error types live in their own module (with the messages and the orbax
# noise filters); the package re-exports them.
from caat_jax.checkpointing.errors import (  # pylint: disable=unused-import
    EXIT_INTERRUPTED, EXIT_PREEMPTED, CheckpointError, CheckpointSaveError,
    IncompatibleConfigError, Preempted)
from caat_jax.checkpointing import errors
from caat_jax.checkpointing.preemption import PreemptionWatcher  # pylint: disable=unused-import

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


# Config keys added after checkpoints were already being written, each with
# the value that reproduces the behaviour before the key existed. A stored
# config without one gets that value (``upgrade_config``), so old runs still
# evaluate and resume: a key that changed behaviour when it arrived does not
# belong here.
ADDED_KEYS = {
    "data.drop_corrupted": False,
    "attack.threat_model": "pixel",
    "caat.anti_bound_scale": 1.0,
    "caat.anti_bound_cap": 0.0,
    "caat.weights": "soft",
}


def upgrade_config(stored: dict) -> dict:
  """``stored`` with every missing ``ADDED_KEYS`` key at its old-behaviour value."""
  out = copy.deepcopy(stored)
  for key, value in ADDED_KEYS.items():
    *path, leaf = key.split(".")
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return out


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
  leaves no step directory that looks finished. A background write that
  fails surfaces as ``CheckpointSaveError`` from the next call into this
  object; ``check_for_errors`` (cheap, call it every step) makes that the
  step at which the write failed.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    errors.quiet_orbax_save_errors()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "config"))
    self._pending: int | None = None  # step of the save in flight
    self._failed: int | None | bool = False  # step of a failed save, reported

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

    Raises:
      CheckpointSaveError: this save, or the previous one still in flight,
        failed.
    """
    # Finish the previous save first (orbax would wait for it anyway), so
    # that its error is reported under its own step.
    self.wait()
    if step in self.manager.all_steps():
      return False
    state_dict = jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))
    try:
      started = self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state_dict),
              config=ocp.args.JsonSave(config_as_json(config))),
          force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if started:
      self._pending = step
    return started

  def check_for_errors(self) -> None:
    """Raises ``CheckpointSaveError`` if the save in flight has failed.

    Does not wait for a save that is still writing: cheap enough for every
    step, so a failed write (disk full) is reported at the step it failed.
    """
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the save in flight is written; raises ``CheckpointSaveError``."""
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def close(self) -> None:
    """Waits for the save in flight (raising its error), then closes."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        # The failure was raised once already (by wait() above or earlier);
        # orbax raises it again on close.
        if self._failed is False:
          raise
      if self._failed is not False:  # once more, now that orbax has stopped
        self._remove_tmp(self._failed)

  def _save_error(self, step: int | None, err: BaseException) -> CheckpointSaveError:
    """The one-line error for a failed save; cleans up its temporary directory."""
    self._failed = step
    self._remove_tmp(step)
    kept = sorted(int(n) for n in os.listdir(self.directory)
                  if n.isdigit() and n != str(step)) if os.path.isdir(self.directory) else []
    space = errors.disk_space(self.directory)
    where = f"step {step}" if step is not None else "a checkpoint"
    return CheckpointSaveError(
        f"saving {where} to {self.directory} failed ({errors.one_line(err)}; "
        f"{space or 'free space unknown'}). The previous checkpoints "
        f"{'(steps ' + str(kept) + ') ' if kept else ''}are kept: free some space "
        "and run the same command again to resume.")

  def _remove_tmp(self, step: int | None) -> None:
    """Removes the temporary directory of a failed save of ``step``.

    orbax writes step S to "S.orbax-checkpoint-tmp..." and renames it when
    complete; a failed save leaves it behind. Writes of that save may still
    be in flight (the first failure ends orbax's wait), and would recreate
    files in it, so they are waited for first (best effort: orbax keeps them
    on private attributes).
    """
    checkpointer = getattr(self.manager, "_checkpointer", None)
    in_flight = getattr(getattr(checkpointer, "_async_manager", None), "_commit_futures", None)
    for f in in_flight or ():
      try:
        f.result(timeout=60)
      except Exception:  # pylint: disable=broad-except
        pass  # the failure itself, already reported
    store = getattr(checkpointer, "_metadata_store", None)
    try:
      if store is not None:
        store.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
    if jax.process_index() == 0 and step is not None and os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}.orbax-checkpoint-tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _stored_layout(self, step: int) -> PyTree:
    """The shapes and dtypes stored in ``step``'s state, without reading data."""
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.metadata(_epath(os.path.join(self.directory, str(step), "state")))
    finally:
      handler.close()

  def restore(self, template: PyTree, step: int | None = None, *,
              max_step: int | None = None,
              config: ml_collections.ConfigDict | None = None,
              allow_config_change: bool = False,
              move_aside: bool = True) -> tuple[PyTree, int] | None:
    """The newest readable checkpoint (or ``step``), as a pytree like ``template``.

    A checkpoint that fails to read (truncated, half-written) is skipped with
    a one-line warning and the next older one is tried; the unreadable ones
    are then moved to ``<directory>_unreadable/`` so that new saves at those
    steps are not blocked by them. If checkpoints exist but none can be read
    this raises ``CheckpointError`` rather than silently starting afresh.

    Args:
      template: a state with the expected structure, shapes and dtypes.
      step: restore exactly this step (no fallback).
      max_step: the newest readable checkpoint at or before this step (the
        evaluation CLI: the step whose config it read, falling back to older
        ones as the trainer does).
      config: if given, the checkpoint's stored config must match it except
        in ``SAFE_TO_CHANGE`` keys, or ``IncompatibleConfigError`` is raised.
      allow_config_change: only warn about config differences. Parameters of
        another shape or dtype are never allowed.
      move_aside: move unreadable newer steps aside (False when reading
        another run's checkpoints, e.g. ``init_from``, or when evaluating).
    Returns:
      (state, step), or None when the directory holds no checkpoint.
    Raises:
      CheckpointError: checkpoints exist but none is readable.
      IncompatibleConfigError: a changed config (unless allowed) or changed
        parameter shapes or dtypes.
    """
    if step is not None:
      steps = [step]
    else:
      steps = [s for s in self.all_steps()[::-1] if max_step is None or s <= max_step]
    if not steps:
      return None
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        flax.serialization.to_state_dict(template))
    # A checkpoint that fails to read echoes its failure once per array.
    errors.quiet_failed_restore_noise()
    errs, unreadable = [], []
    for s in steps:
      try:
        # The config is read first and on its own: a changed model would make
        # the state fail to read, and that must surface as a config error,
        # not as a corrupt checkpoint.
        stored = self.restore_config(s) if config is not None else None
        if stored is not None:
          check_config_compatible(stored, config, s, self.directory, allow_config_change)
        # Then the stored shapes (metadata only): orbax would hand back the
        # stored shapes, or fail as if the checkpoint were corrupt.
        diffs = errors.layout_differences(self._stored_layout(s), target)
        if diffs:
          raise errors.layout_error(diffs, s, self.directory)
        restored = self.manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        state = flax.serialization.from_state_dict(template, restored["state"])
      except IncompatibleConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying an older one",
                        s, self.directory, errors.one_line(e, limit=160))
        errs.append(f"step {s}: {errors.one_line(e, limit=160)}")
        unreadable.append(s)
        continue
      if unreadable and move_aside:
        self._move_aside(unreadable)
      return state, s
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} (tried steps {steps}); "
        "refusing to start afresh over existing checkpoints. Move the directory "
        "away to start a new run. Errors: " + "; ".join(errs))

  def restore_config(self, step: int) -> dict:
    """The config stored with ``step``, as a JSON dict (``upgrade_config``d)."""
    return upgrade_config(self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

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
