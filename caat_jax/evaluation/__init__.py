"""Per-class robust evaluation (SPEC section 9), a library below the trainer.

``Evaluator`` runs named attacks (``attacks``: pgd<k>, autoattack) over a
split with the run's parallel wrapper; ``report`` turns outcomes into the
result documents and tables. The command line, which restores a run from its
checkpoint, lives above the trainer in ``caat_jax.evaluate``.
"""

from caat_jax.evaluation.attacks import AUTOATTACK, check_names, eval_fn, pgd_steps
from caat_jax.evaluation.evaluator import Evaluator
from caat_jax.evaluation.report import (format_per_class, format_table, per_class_error,
                                        report, write_json)

__all__ = ["AUTOATTACK", "Evaluator", "check_names", "eval_fn", "format_per_class",
           "format_table", "per_class_error", "pgd_steps", "report", "write_json"]
