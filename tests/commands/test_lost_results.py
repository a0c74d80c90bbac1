"""Results are never lost or misreported in silence: a record dropped from
``metrics.jsonl`` as torn is written again or said to be lost, through the
real command line (exit code, one line on stderr, no traceback, what was
written before intact)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env

_TINY_PGD_AT = [
  "--config=configs/digits.py",
  "--config.num_epochs=1",
  "--config.suite=()",
  "--config.method=pgd_at",
  "--config.attack.num_steps=1",
  "--config.model_width=4",
  "--config.eval.num_examples=60",
  "--config.eval.attacks=('pgd2',)",
  "--config.log_every_steps=5",
]


def _main(workdir, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "caat_jax.main", f"--workdir={workdir}", *_TINY_PGD_AT],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _messages(stderr):
  """stderr's lines less progress bars (tqdm)."""
  return [l for l in stderr.splitlines() if l.strip() and not re.search(r"\d+it \[|\d+%\|", l)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  res = _main(workdir)
  assert res.returncode == 0, res.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.readlines()
  assert any('"eval/' in l for l in lines[-1:])  # the final evaluation is the last record
  return workdir, lines


@pytest.mark.parametrize("damage", ["cut_last", "garbage_last", "cut_middle"])
def test_a_torn_record_is_written_again_or_said_lost(finished_run, tmp_path, damage):
  src, lines = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(src, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  n = len(lines) - 1 if damage != "cut_middle" else 1  # 0-based line to damage
  damaged = list(lines)
  damaged[n] = "#!garbage{\n" if damage == "garbage_last" else lines[n][: len(lines[n]) // 2]
  if damage == "cut_middle":
    damaged[n] += "\n"
  with open(path, "w") as f:
    f.writelines(damaged)

  res = _main(workdir)

  assert res.returncode == 0, res.stderr
  assert "Traceback" not in res.stderr
  messages = _messages(res.stderr)
  assert len(messages) == 1, res.stderr
  with open(path) as f:
    after = f.readlines()
  if damage == "cut_middle":
    assert f"line {n + 1} (after step" in messages[0]
    assert "not written again" in messages[0] and "writes them again" not in messages[0]
    assert after == lines[:n] + lines[n + 1 :]  # the rest intact, the final record kept
  else:
    assert "final evaluation, which this run writes again" in messages[0]
    assert after[:-1] == lines[:-1]
    final = json.loads(after[-1])
    want = json.loads(lines[-1])
    assert final == want  # restored from eval.json: the same record


# --- bench: nothing to measure, and never a result replaced by less ----------


def _bench(*flags, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "caat_jax.bench", "--config=configs/digits.py", *flags],
    cwd=ROOT,
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


_EARLIER = '{"backend": "cpu", "rows": [{"method": "pgd_at", "step_s": 1.0}]}'


@pytest.mark.parametrize(
  "flags, named",
  [
    (["--skip_train_bench"], "--skip_train_bench"),
    (["--config.bench.methods=()"], "--config.bench.methods is empty"),
  ],
)
def test_bench_with_nothing_to_measure_is_refused(tmp_path, flags, named):
  out = tmp_path / "bench.json"
  out.write_text(_EARLIER)
  res = _bench(*flags, f"--out={out}")
  assert res.returncode == 1, res.stderr
  assert "Traceback" not in res.stderr
  assert _messages(res.stderr) == [
    f"error: nothing to measure: {named} and no --attacks; "
    "name methods in --config.bench.methods or attacks in --attacks"
  ]
  assert out.read_text() == _EARLIER
  assert sorted(os.listdir(tmp_path)) == ["bench.json"]


def test_bench_writes_beside_a_result_it_would_shrink(tmp_path):
  out = tmp_path / "bench.json"
  out.write_text(_EARLIER)
  res = _bench(
    "--skip_train_bench",
    "--attacks=pgd2",
    "--attack_batch=4",
    "--config.model_width=4",
    f"--out={out}",
  )
  assert res.returncode == 0, res.stderr
  assert "Traceback" not in res.stderr
  beside = tmp_path / "bench.new.json"
  assert _messages(res.stderr) == [
    f"bench: {out} holds rows (rows: pgd_at) that this run did not measure; "
    f"kept it as it was and wrote this run's results to {beside}"
  ]
  assert out.read_text() == _EARLIER
  assert [r["attack"] for r in json.loads(beside.read_text())["attacks"]["rows"]] == ["pgd2"]
