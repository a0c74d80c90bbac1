"""Benchmarks: train-step and evaluation-attack timings.

``python -m caat_jax.bench --config=configs/digits.py`` (see ``__main__``):
``steps`` times every method's real train step, ``attacks`` the evaluation
attacks. Speed goals live here, not in tests.
"""

from caat_jax.bench.attacks import (
  attack_problem,
  attack_table_head,
  bench_attack,
  check_attack_args,
  format_attack_row,
  format_attack_rows,
  run_attack_bench,
)
from caat_jax.bench.steps import bench_config, bench_method, format_rows, forward_units, run_bench

__all__ = [
  "attack_problem",
  "attack_table_head",
  "bench_attack",
  "bench_config",
  "bench_method",
  "check_attack_args",
  "format_attack_row",
  "format_attack_rows",
  "format_rows",
  "forward_units",
  "run_attack_bench",
  "run_bench",
]
