"""The report's gradient-masking check against hand computations on
hand-written run directories (no training)."""

import json
import os

import pytest

from caat_jax.experiments import masking, registry, report

EXP = "digits_table6_autoattack"  # evaluates digits_table6's models with AutoAttack


def _doc(attack, robust, stages=None, warnings=()):
  per = [robust] * 10
  doc = {
    "attack": attack,
    "method": "pgd_at",
    "eps": 0.1,
    "avg": {"natural": 10.0, "boundary": robust - 10.0, "robust": robust},
    "worst": {"natural": 20.0, "boundary": robust - 5.0, "robust": robust + 10.0},
    "per_class": {"natural": [10.0] * 10, "boundary": per, "robust": per},
  }
  if stages is not None:
    doc.update(stages=stages, warnings=list(warnings))
  return doc


def _runs(workdir):
  # (PGD-20 robust, AutoAttack robust, robust error after FAB-T, after Square, warnings)
  seeds = [
    (40.0, 42.5, 41.0, 42.5, ["Square beat the gradient attacks"]),
    (50.0, 50.5, 50.5, 50.5, []),
  ]
  for seed, (p, a, fab, sq, warn) in enumerate(seeds):
    d = os.path.join(workdir, "pgd-at", f"seed{seed}")
    os.makedirs(d)
    stages = {"apgd-ce": fab - 1.0, "apgd-t": fab, "fab-t": fab, "square": sq}
    with open(os.path.join(d, "eval.json"), "w") as f:
      json.dump([_doc("pgd20", p), _doc("autoattack", a, stages, warn)], f)


def test_row_checks_by_hand(tmp_path):
  workdir = str(tmp_path / "w")
  _runs(workdir)
  exp, rows = registry.get(EXP), ["pgd-at", "trades-b6"]
  (c,) = masking.row_checks(exp, report.check_runs(exp, workdir, seeds=2, rows=rows), rows)
  assert c["row"] == "pgd-at" and c["seeds"] == [0, 1]  # trades-b6: no runs, no row
  assert c["gap"] == pytest.approx([2.5, 0.5])
  assert c["square_only"] == pytest.approx([1.5, 0.0])
  assert c["warnings"] == ["Square beat the gradient attacks"]


def test_the_report_shows_the_check(tmp_path):
  workdir, out = str(tmp_path / "w"), str(tmp_path / "out")
  _runs(workdir)
  report.write(
    registry.get(EXP), workdir, out, seeds=2, rows=["pgd-at"], figures=False, on_problem=print
  )
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert "## Gradient-masking check" in md
  line = next(ln for ln in md.splitlines() if ln.startswith("| PGD-AT") and "/" in ln)
  assert "| 2 | 0.50 / 1.50 / 2.50 | 0.75 | Square beat the gradient attacks |" in line


def test_no_section_without_both_evaluations(tmp_path):
  workdir = str(tmp_path / "w")
  d = os.path.join(workdir, "pgd-at", "seed0")
  os.makedirs(d)
  with open(os.path.join(d, "eval.json"), "w") as f:
    json.dump([_doc("pgd20", 40.0)], f)
  exp = registry.get(EXP)
  checked = report.check_runs(exp, workdir, seeds=1, rows=["pgd-at"])
  assert masking.row_checks(exp, checked, ["pgd-at"]) == []
  assert masking.section([]) == ""
