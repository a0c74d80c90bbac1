"""After a checkpoint save fails: its one-line error, and no half-written directory.

orbax writes step S to "S.orbax-checkpoint-tmp..." and renames it when
complete; a failed save leaves that temporary directory behind. It is
removed here (older checkpoints are never touched), and the error names the
step, the path, the free space and the checkpoints that are kept.
"""

import logging
import os
import re
import shutil
import time

import jax
import orbax.checkpoint as ocp

from caat_jax.checkpointing import errors, orbax_internals
from caat_jax.checkpointing.errors import CheckpointSaveError


def remove_tmp(manager: ocp.CheckpointManager, directory: str, step: int | None) -> None:
  """Removes the temporary directory of a failed save of ``step``.

  Writes of that save may still be in flight (the first failure ends orbax's
  wait), and would recreate files in it, so they are waited for first
  (``orbax_internals.wait_for_abandoned_writes``).
  """
  orbax_internals.wait_for_abandoned_writes(manager)
  if jax.process_index() != 0 or step is None:
    return
  # Tensorstore writes orbax no longer tracks (its event loop closed on the
  # first failure) may still create folders in it (a full disk still has
  # inodes): removed until it stays gone for half a second (at most 5 s).
  deadline, gone = time.monotonic() + 5, 0
  while gone < 10 and time.monotonic() < deadline:
    names = [
      n
      for n in (os.listdir(directory) if os.path.isdir(directory) else ())
      if n.startswith(f"{step}.orbax-checkpoint-tmp")
    ]
    for name in names:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    gone = 0 if names else gone + 1
    if gone < 10:
      time.sleep(0.05)


# orbax's temporary step directory: "40.orbax-checkpoint-tmp" or "...-tmp-<timestamp>".
_TMP_STEP_DIR = re.compile(r"\d+\.orbax-checkpoint-tmp(-\d+)?")


def remove_stale_tmp(directory: str) -> list[str]:
  """Removes the temporary step directories a killed save left in ``directory``.

  Called by a run about to resume in its own checkpoint directory, before it
  saves anything: no save of this run is in flight, so every such directory
  is left by a process that died mid-save (a preemption at a save). Only
  orbax's own ``<step>.orbax-checkpoint-tmp[-<timestamp>]`` directories
  directly in ``directory`` are removed, on process 0. Returns their names.
  """
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if _TMP_STEP_DIR.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(name)
  if removed:
    logging.info("removed %s from %s (left by a save cut short)", removed, directory)
  return removed


def save_error(directory: str, step: int | None, err: BaseException) -> CheckpointSaveError:
  """The one-line error for a failed save of ``step`` into ``directory``."""
  kept = (
    sorted(int(n) for n in os.listdir(directory) if n.isdigit() and n != str(step))
    if os.path.isdir(directory)
    else []
  )
  space = errors.disk_space(directory)
  where = f"step {step}" if step is not None else "a checkpoint"
  if kept:
    after = (
      f"The previous checkpoints (steps {kept}) are kept: free some space and run the "
      "same command again to resume."
    )
  else:  # the very first save: there is nothing to resume from
    after = (
      "No checkpoint of this run was saved before: free some space and run the same "
      "command again (it starts from the beginning)."
    )
  return CheckpointSaveError(
    f"saving {where} to {directory} failed ({errors.one_line(err, limit=None)}; "
    f"{space or 'free space unknown'}). {after}"
  )
