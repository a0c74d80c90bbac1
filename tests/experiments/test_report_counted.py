"""``experiments report`` counts only the runs trained as their row says and
names every other one: missing, unfinished, unreadable or trained otherwise
(hand-written run directories: no training)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from caat_jax.experiments import registry, report
from tests.helpers import ROOT, subprocess_env

EXP = "digits_table1"


def _doc(method="pgd_at", robust=50.0):
  per = [robust] * 10
  return {
    "attack": "pgd20",
    "method": method,
    "eps": 0.1,
    "avg": {"natural": 10.0, "boundary": robust - 10.0, "robust": robust},
    "worst": {"natural": 20.0, "boundary": robust - 5.0, "robust": robust + 10.0},
    "per_class": {"natural": [10.0] * 10, "boundary": per, "robust": per},
  }


def _run(workdir, seed, content):
  d = os.path.join(workdir, "pgd-at", f"seed{seed}")
  os.makedirs(d, exist_ok=True)
  if content is not None:
    with open(os.path.join(d, "eval.json"), "w") as f:
      f.write(content if isinstance(content, str) else json.dumps(content))
  return d


CASES = {
  "garbage": ("{not json", "unreadable eval.json ("),
  "unfinished": (None, "no evaluation of pgd20 (training unfinished); left out"),
  "foreign": (
    [_doc("trades", 60.0)],
    "trained otherwise than the row: method='trades' (row: 'pgd_at')",
  ),
}


def _make(tmp_path, case):
  workdir = str(tmp_path / "w")
  _run(workdir, 0, [_doc(robust=50.0)])
  _run(workdir, 1, CASES[case][0])
  return workdir


def _report(workdir, out):
  messages = []
  report.write(
    registry.get(EXP),
    workdir,
    out,
    seeds=2,
    rows=["pgd-at"],
    figures=False,
    on_problem=messages.append,
  )
  with open(os.path.join(out, "report.csv")) as f:
    rows = {r["column"]: r for r in csv.DictReader(f)}
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  return messages, rows, md


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_seed_is_named_left_out_and_the_row_marked(tmp_path, case):
  workdir = _make(tmp_path, case)
  messages, rows, md = _report(workdir, str(tmp_path / "out"))
  assert len(messages) == 1, messages
  assert messages[0].startswith(f"report: pgd-at/seed1 ({workdir}/pgd-at/seed1): ")
  assert CASES[case][1] in messages[0]
  r = rows["avg_robust"]
  assert (r["n"], r["seeds"], r["seeds_expected"]) == ("1", "0", "2")
  assert float(r["mean"]) == 50.0 and r["std"] == ""  # seed 0 alone, no spread
  assert "| PGD-AT | 1/2 |" in md


def test_a_missing_seed_directory_is_named(tmp_path):
  workdir = str(tmp_path / "w")
  _run(workdir, 0, [_doc()])
  messages, rows, md = _report(workdir, str(tmp_path / "out"))
  assert messages == [
    f"report: pgd-at/seed1 ({workdir}/pgd-at/seed1): missing (no run directory); left out"
  ]
  assert rows["avg_robust"]["n"] == "1" and "| PGD-AT | 1/2 |" in md


def test_complete_rows_are_not_marked(tmp_path):
  workdir = str(tmp_path / "w")
  _run(workdir, 0, [_doc(robust=50.0)])
  _run(workdir, 1, [_doc(robust=54.0)])
  messages, rows, md = _report(workdir, str(tmp_path / "out"))
  assert messages == []
  r = rows["avg_robust"]
  assert (r["n"], r["seeds_expected"], float(r["mean"])) == ("2", "2", 52.0)
  assert float(r["std"]) == pytest.approx(2.8284, abs=1e-4)
  assert "| PGD-AT | 2 |" in md


@pytest.mark.parametrize("strict", [False, True])
def test_cli_names_the_run_on_stderr_and_strict_fails(tmp_path, strict):
  workdir = _make(tmp_path, "foreign")
  out = tmp_path / "out"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "caat_jax.experiments",
      "report",
      EXP,
      f"--workdir={workdir}",
      "--rows=pgd-at",
      "--seeds=2",
      "--no_figures",
      f"--out={out}",
    ]
    + (["--strict"] if strict else []),
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == (1 if strict else 0), res.stderr
  assert "Traceback" not in res.stderr
  assert res.stderr.splitlines() == [
    f"report: pgd-at/seed1 ({workdir}/pgd-at/seed1): trained otherwise than the row: "
    "method='trades' (row: 'pgd_at'); left out"
  ]
  with open(out / "report.csv") as f:
    r = next(r for r in csv.DictReader(f) if r["column"] == "avg_robust")
  assert (r["n"], r["seeds_expected"], r["std"]) == ("1", "2", "")
  # what the runs wrote is left as it was
  with open(os.path.join(workdir, "pgd-at", "seed1", "eval.json")) as f:
    assert json.load(f)[0]["method"] == "trades"
