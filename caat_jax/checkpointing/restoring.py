"""Reading a checkpoint back: the newest readable one, checked against the run.

``restore_newest`` is the body of ``Checkpointer.restore``: it tries steps
newest first, checks the stored config and parameter layout before reading
any data, skips unreadable checkpoints with a warning, and moves them aside
(``move_aside``) once a readable one is found.
"""

import logging
import os
import shutil
import time
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path as _epath
from jax.experimental import multihost_utils

from caat_jax.checkpointing import errors
from caat_jax.checkpointing.config_compat import check_config_compatible
from caat_jax.checkpointing.errors import CheckpointError, IncompatibleConfigError

PyTree = Any


def stored_layout(directory: str, step: int) -> PyTree:
  """The shapes and dtypes stored in ``step``'s state, without reading data."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.metadata(_epath(os.path.join(directory, str(step), "state")))
  finally:
    handler.close()


def move_aside(manager: ocp.CheckpointManager, directory: str, steps: list[int]) -> None:
  """Moves unreadable step directories out of the manager's sight.

  Kept (not deleted) for inspection, in ``<directory>_unreadable/``. Process 0
  moves them, everyone waits, and every manager re-reads the directory.
  """
  if jax.process_index() == 0:
    aside = directory.rstrip("/") + "_unreadable"
    os.makedirs(aside, exist_ok=True)
    for s in steps:
      src = os.path.join(directory, str(s))
      if os.path.exists(src):
        dst = os.path.join(aside, f"{s}.{int(time.time())}")
        shutil.move(src, dst)
        logging.warning("moved unreadable checkpoint %s to %s", src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("caat_jax:checkpoint_move_aside")
  manager.reload()


def restore_newest(
  ckpt: Any,
  template: PyTree,
  steps: list[int],
  *,
  config: ml_collections.ConfigDict | None,
  allow_config_change: bool,
  move_unreadable: bool,
) -> tuple[PyTree, int]:
  """The first readable checkpoint of ``steps`` (newest first) of ``ckpt``.

  ``ckpt`` is the ``Checkpointer`` (its ``manager``, ``directory`` and
  ``restore_config``); the other arguments are those of its ``restore``.
  """
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
    flax.serialization.to_state_dict(template),
  )
  # A checkpoint that fails to read echoes its failure once per array.
  errors.quiet_failed_restore_noise()
  errs, unreadable = [], []
  for s in steps:
    try:
      # The config is read first and on its own: a changed model would make
      # the state fail to read, and that must surface as a config error,
      # not as a corrupt checkpoint.
      stored = ckpt.restore_config(s) if config is not None else None
      # The stored shapes (metadata only): orbax would hand back the stored
      # shapes, or fail as if the checkpoint were corrupt. Read before the
      # config is judged, so that its error offers only what would work.
      try:
        diffs = errors.layout_differences(stored_layout(ckpt.directory, s), target)
      except Exception:  # pylint: disable=broad-except  (unreadable: said below)
        diffs = None
      if stored is not None:
        reshaped = [f"{k}: checkpoint {o} -> now {n}" for k, o, n in diffs or ()]
        check_config_compatible(stored, config, s, ckpt.directory, allow_config_change, reshaped)
      if diffs is None:
        diffs = errors.layout_differences(stored_layout(ckpt.directory, s), target)
      if diffs:
        raise errors.layout_error(diffs, s, ckpt.directory)
      restored = ckpt.manager.restore(
        s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )
      state = flax.serialization.from_state_dict(template, restored["state"])
    except IncompatibleConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if s != steps[-1]:  # the last one's failure is the error raised below
        logging.warning(
          "checkpoint step %d in %s is unreadable (%s); trying an older one",
          s,
          ckpt.directory,
          errors.one_line(e, limit=160),
        )
      errs.append((s, errors.one_line(e, limit=None)))
      unreadable.append(s)
      continue
    if unreadable and move_unreadable:
      move_aside(ckpt.manager, ckpt.directory, unreadable)
    return state, s
  # The caller that only reads (move_unreadable False: evaluation, init_from)
  # gives its own advice from ``reasons``; this one fits the trainer.
  raise CheckpointError(
    f"no readable checkpoint in {ckpt.directory} (tried steps {steps}); "
    "refusing to start afresh over existing checkpoints:\n"
    + "".join(f"  step {s}: {why}\n" for s, why in errs)
    + "Put readable checkpoints back (from a copy), or move the directory away to "
    "start a new run.",
    reasons=errs,
  )
