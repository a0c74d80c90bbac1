"""Run state on disk: orbax checkpoints, resume, preemption and the workdir lock.

* ``manager``: ``Checkpointer`` (save, restore, resume with config checks),
  ``load_variables`` (a run's parameters for evaluation or a hot start);
* ``config_compat``: whether a stored config fits the current one
  (``config_differences``, ``SAFE_TO_CHANGE``, ``ADDED_KEYS``);
* ``restoring``, ``save_failure``: the parts of ``Checkpointer.restore`` and
  of its handling of a failed save (one-line error, temporary directory);
* ``orbax_internals``: the one function that uses orbax's private
  attributes, checking each one exists;
* ``errors``: the error types, exit codes and messages, and the filters that
  keep orbax's own logging of an error we handle off the user's screen;
* ``preemption``: ``PreemptionWatcher`` (SIGTERM / SIGINT and JAX's
  preemption sync point, agreed on by every process);
* ``workdir``: one run per directory (a lock file naming its holder).
"""

from caat_jax.checkpointing.config_compat import (
  ADDED_KEYS,
  SAFE_TO_CHANGE,
  config_as_json,
  config_differences,
)
from caat_jax.checkpointing.errors import (
  EXIT_INTERRUPTED,
  EXIT_PREEMPTED,
  CheckpointError,
  CheckpointSaveError,
  IncompatibleConfigError,
  Preempted,
)
from caat_jax.checkpointing.manager import (
  Checkpointer,
  checkpoint_dir,
  load_variables,
  resolve_directory,
)
from caat_jax.checkpointing.preemption import PreemptionWatcher

__all__ = [
  "ADDED_KEYS",
  "EXIT_INTERRUPTED",
  "EXIT_PREEMPTED",
  "SAFE_TO_CHANGE",
  "CheckpointError",
  "CheckpointSaveError",
  "Checkpointer",
  "IncompatibleConfigError",
  "Preempted",
  "PreemptionWatcher",
  "checkpoint_dir",
  "config_as_json",
  "config_differences",
  "load_variables",
  "resolve_directory",
]
