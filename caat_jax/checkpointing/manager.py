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

import os
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from caat_jax.checkpointing import errors, many_hosts, restoring, save_failure
from caat_jax.checkpointing.config_compat import config_as_json, upgrade_config
from caat_jax.checkpointing.errors import CheckpointSaveError

PyTree = Any


class Checkpointer:
  """The orbax checkpoints of one run: save, restore, resume.

  Args (of the constructor):
    directory: the checkpoint directory, e.g. ``checkpoint_dir(workdir)``
      (created if missing); one subdirectory per saved step.
    keep: how many of the newest checkpoints to keep (older ones are deleted).
    async_save: write in the background (default); False makes ``save``
      return once the checkpoint is written.

  The caller decides when to save (the trainer: every
  ``config.checkpoint_every_steps`` steps, at the end of each epoch, before
  stopping). An asynchronous ``save`` returns once the state is copied to the
  host; orbax writes to a temporary directory renamed to the step's directory
  when complete, so a process killed mid-write leaves no finished-looking
  step. A failed background write surfaces as ``CheckpointSaveError`` from
  the next call into this object; ``check_for_errors`` (cheap, call it every
  step) makes that the step at which the write failed.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    errors.quiet_orbax_save_errors()
    errors.quiet_failed_restore_noise()
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
      ),
      item_names=("state", "config"),
    )
    self._pending: int | None = None  # step of the save in flight
    self._failed: int | None | bool = False  # step of a failed save, reported

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(
    self, step: int, state: PyTree, config: ml_collections.ConfigDict, *, force: bool = False
  ) -> bool:
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
    self.wait(before=step)
    if step in self.manager.all_steps():
      return False
    state_dict = jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))
    try:
      started = self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state_dict), config=ocp.args.JsonSave(config_as_json(config))
        ),
        force=force,
      )
    except Exception as e:  # pylint: disable=broad-except
      err = self._save_error(step, e)
      many_hosts.stop_on_save_error(err, self.directory, step)  # several hosts: exits
      raise err from e
    if started:
      self._pending = step
    return started

  def check_for_errors(self) -> None:
    """Raises ``CheckpointSaveError`` if the save in flight has failed.

    Does not wait for a save that is still writing: cheap enough for every
    step, so a failed write (disk full) is reported at the step it failed.
    """
    if many_hosts.active():  # acted on at the next wait, by every process alike
      return
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self, before: int | None = None) -> None:
    """Blocks until the save in flight is written; raises ``CheckpointSaveError``.

    ``before``: the step about to be saved, if any. On several processes a
    failed save on any of them stops every one here (``many_hosts``).
    """
    step, self._pending = self._pending, None
    many_hosts.wait_for_save(self.manager, self.directory, step, before)
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      err = self._save_error(step, e)
      many_hosts.stop_on_save_error(err, self.directory, before)  # several hosts: exits
      raise err from e

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
        save_failure.remove_tmp(self.manager, self.directory, self._failed)

  def _save_error(self, step: int | None, err: BaseException) -> CheckpointSaveError:
    """The one-line error for a failed save; cleans up its temporary directory."""
    self._failed = step
    save_failure.remove_tmp(self.manager, self.directory, step)
    return save_failure.save_error(self.directory, step, err)

  def restore(
    self,
    template: PyTree,
    step: int | None = None,
    *,
    max_step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    allow_config_change: bool = False,
    move_aside: bool = True,
  ) -> tuple[PyTree, int] | None:
    """The newest readable checkpoint (or ``step``), as a pytree like ``template``.

    An unreadable checkpoint (truncated, half-written) is skipped with a
    warning, the next older one tried, and the skipped ones then moved to
    ``<directory>_unreadable/`` (so they block no new save at their steps).

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
      move_aside: move unreadable newer steps aside, and remove the temporary
        directories of saves cut short (False when reading another run's
        checkpoints, e.g. ``init_from``, or when evaluating).
    Returns:
      (state, step), or None when the directory holds no checkpoint.
    Raises:
      CheckpointError: checkpoints exist but none is readable (never a
        silent fresh start).
      IncompatibleConfigError: a changed config (unless allowed) or changed
        parameter shapes or dtypes.
    """
    if move_aside:  # our own run, about to resume: no save of it is in flight
      save_failure.remove_stale_tmp(self.directory)
    if step is not None:
      steps = [step]
    else:
      steps = [s for s in self.all_steps()[::-1] if max_step is None or s <= max_step]
    if not steps:
      return None
    return restoring.restore_newest(
      self,
      template,
      steps,
      config=config,
      allow_config_change=allow_config_change,
      move_unreadable=move_aside,
    )

  def restore_config(self, step: int) -> dict:
    """The config stored with ``step``, as a JSON dict (``upgrade_config``d)."""
    return upgrade_config(
      self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    )


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
