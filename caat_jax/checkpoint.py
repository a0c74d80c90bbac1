"""Orbax checkpoints of the whole train state, plus the run's config.

A checkpoint holds ``flax.serialization.to_state_dict(state)`` (classifier,
BatchNorm statistics, every optimiser state, method state, RNG key, step) and
the config as JSON. The position in the data order is a function of the step
(the epoch's permutation is keyed by (seed, epoch)), so resuming from step s
continues exactly where the run stopped.
"""

import json
import logging
import os
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
  """Saves every ``save_every`` steps (and on demand), keeps the last ``keep``."""

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
    """Saves the (single-copy, unreplicated) ``state`` as step ``step``."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))),
        force=force)

  def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, int] | None:
    """The newest readable checkpoint (or ``step``), as a pytree like ``template``.

    A checkpoint that fails to read (truncated, half-written) is skipped with
    a warning and the next older one is tried; if checkpoints exist but none
    can be read this raises rather than silently starting afresh.
    Returns (state, step), or None when the directory holds no checkpoint.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      return None
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        flax.serialization.to_state_dict(template))
    errors = []
    for s in steps:
      try:
        restored = self.manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return flax.serialization.from_state_dict(template, restored["state"]), s
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying an older one",
                        s, self.directory, e)
        errors.append(f"step {s}: {e}")
    raise RuntimeError(
        f"no readable checkpoint in {self.directory} (tried steps {steps}); "
        "refusing to start afresh over existing checkpoints. Errors: " + "; ".join(errors))

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def load_variables(path: str, template_state: PyTree) -> dict[str, PyTree]:
  """Classifier variables from a run workdir or its checkpoint directory.

  For ``config.init_from`` (e.g. a PGD-AT hot start): only ``params`` and
  ``batch_stats`` are taken; optimiser and method state start fresh.
  """
  directory = path
  if os.path.isdir(checkpoint_dir(path)):
    directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.init_from={path!r}: no such directory")
  ckpt = Checkpointer(directory, async_save=False)
  try:
    got = ckpt.restore(template_state)
  finally:
    ckpt.close()
  if got is None:
    raise FileNotFoundError(f"config.init_from={path!r}: no checkpoint in {directory}")
  state, _ = got
  return {"params": state.params, "batch_stats": state.batch_stats}
