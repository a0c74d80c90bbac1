"""Per-class robust evaluation (docs/method.md §9), a library below the trainer.

``Evaluator`` runs named attacks (``attacks``: pgd<k>, autoattack, its
version 'rand' and its attacks one by one, the latter compacted on the
still-robust points,
``ensemble``) over a split with the run's parallel wrapper; ``report`` turns outcomes into the
result documents and tables. The command line, which restores a run from its
checkpoint, lives above the trainer in ``caat_jax.evaluate``.
"""

from caat_jax.evaluators.evaluator import Evaluator
from caat_jax.evaluators.named_attacks import (
  AA_FAMILY,
  AUTOATTACK,
  AUTOATTACK_RAND,
  check_names,
  check_num_classes,
  eval_fn,
  pgd_steps,
  valid_names,
)
from caat_jax.evaluators.per_class import (
  format_per_class,
  format_table,
  per_class_error,
  report,
  write_json,
)

__all__ = [
  "AA_FAMILY",
  "AUTOATTACK",
  "AUTOATTACK_RAND",
  "Evaluator",
  "check_names",
  "check_num_classes",
  "eval_fn",
  "valid_names",
  "format_per_class",
  "format_table",
  "per_class_error",
  "pgd_steps",
  "report",
  "write_json",
]
