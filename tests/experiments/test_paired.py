"""``experiments.paired`` and the report's paired columns, against a hand
computation with scipy.stats on synthetic per-seed values (hand-written run
directories: no training)."""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from caat_jax.experiments import paired, registry, report

ROW = {0: 20.1, 1: 22.7, 2: 19.4, 3: 25.0}
REF = {1: 18.0, 2: 18.9, 3: 21.2, 4: 30.0}  # seeds 1-3 in common


def _by_hand(row, ref):
  seeds = sorted(set(row) & set(ref))
  a, b = np.array([row[s] for s in seeds]), np.array([ref[s] for s in seeds])
  d = a - b
  n = len(d)
  half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
  return n, d.mean(), d.mean() - half, d.mean() + half, stats.ttest_rel(a, b).pvalue


def test_paired_matches_scipy_on_the_common_seeds():
  got = paired.paired(ROW, REF)
  n, diff, lo, hi, p = _by_hand(ROW, REF)
  assert got["seeds"] == [1, 2, 3] and got["n"] == n == 3
  assert (got["diff"], got["ci_low"], got["ci_high"], got["p"]) == pytest.approx(
    (diff, lo, hi, p), rel=1e-10
  )
  # the interval excludes 0 exactly when p < 0.05
  assert (got["ci_low"] > 0 or got["ci_high"] < 0) == (got["p"] < 0.05)


def test_paired_degenerate_cases():
  one = paired.paired({0: 5.0}, {0: 3.0})
  assert one["n"] == 1 and one["diff"] == 2.0 and math.isnan(one["p"])
  assert paired.cell(one) == "+2.00 (n 1)"
  none = paired.paired({0: 5.0}, {1: 3.0})
  assert none["n"] == 0 and paired.cell(none) == "–"
  constant = paired.paired({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0})  # no spread in the differences
  assert constant["diff"] == 1.0 and math.isnan(constant["p"])


def _doc(method, robust):
  return {
    "attack": "pgd20",
    "method": method,
    "avg": {"natural": robust / 10, "boundary": robust - 10.0, "robust": robust},
    "worst": {"natural": 20.0, "boundary": robust - 5.0, "robust": robust + 10.0},
    "per_class": {"natural": [1.0] * 10, "boundary": [1.0] * 10, "robust": [robust] * 10},
  }


def _write(workdir, row, method, values):
  for seed, v in values.items():
    d = os.path.join(workdir, row, f"seed{seed}")
    os.makedirs(d)
    with open(os.path.join(d, "eval.json"), "w") as f:
      json.dump([_doc(method, v)], f)


def test_report_writes_the_paired_difference_with_unequal_seeds(tmp_path):
  workdir, out = str(tmp_path / "w"), str(tmp_path / "out")
  _write(workdir, "pgd-at", "pgd_at", ROW)
  _write(workdir, "trades-b6", "trades", REF)
  exp = registry.get("digits_table1")
  assert exp.reference == "trades-b6"
  report.write(
    exp, workdir, out, rows=["pgd-at", "trades-b6"], figures=False, on_problem=lambda m: None
  )
  with open(os.path.join(out, "report.csv")) as f:
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(f)}
  r = rows["pgd-at", "avg_robust"]
  n, diff, lo, hi, p = _by_hand(ROW, REF)
  assert (r["reference"], r["n_paired"], r["n"]) == ("trades-b6", "3", "4")
  got = [float(r[k]) for k in ("diff", "ci_low", "ci_high", "p")]
  assert got == pytest.approx([diff, lo, hi, p], abs=1e-4)
  assert rows["trades-b6", "avg_robust"]["p"] == ""  # the reference itself
  md = open(os.path.join(out, "report.md")).read()
  assert "Paired difference to TRADES (1/λ = 6)" in md
  assert f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}], p {p:.3f} (n 3)" in md
  assert "FRL (ReWeight): trained from scratch" not in md  # notes of the rows shown only


def test_reference_flag_overrides_and_unknown_is_named(tmp_path):
  workdir, out = str(tmp_path / "w"), str(tmp_path / "out")
  _write(workdir, "pgd-at", "pgd_at", ROW)
  _write(workdir, "trades-b6", "trades", REF)
  exp = registry.get("digits_table1")
  kw = dict(rows=["pgd-at", "trades-b6"], figures=False, on_problem=lambda m: None)
  report.write(exp, workdir, out, reference="pgd-at", **kw)
  with open(os.path.join(out, "report.csv")) as f:
    r = next(
      r for r in csv.DictReader(f) if r["row"] == "trades-b6" and r["column"] == "avg_robust"
    )
  assert r["reference"] == "pgd-at" and float(r["diff"]) == pytest.approx(-_by_hand(ROW, REF)[1])
  with pytest.raises(KeyError, match="--reference='nope': not a row of this report; rows: pgd-at"):
    report.write(exp, workdir, out, reference="nope", **kw)
