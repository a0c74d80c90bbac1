"""``python -m caat_jax.meta_bench``: each meta-gradient variant's fidelity
to the exact hypergradient and its cost, along a real run.

``capture`` trains (or restores) the run and captures a Meta-CAAT step's
``MetaProblem`` at checkpoints; ``probe`` runs every variant of
``meta.VARIANTS`` on it against ``nested_grad`` (``fidelity``'s metrics);
``cost`` times the meta part and the whole step; ``report`` writes
``meta_bench.json``, ``meta_bench.md`` and ``meta_bench.png``.
"""

from caat_jax.meta_bench import capture, cost, fidelity, probe, report
from caat_jax.meta_bench.runner import check_checkpoints, check_variants, run_meta_bench

__all__ = [
  "capture",
  "check_checkpoints",
  "check_variants",
  "cost",
  "fidelity",
  "probe",
  "report",
  "run_meta_bench",
]
