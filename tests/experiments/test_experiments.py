"""``caat_jax.experiments``: registry, resumable runner, report, emit, cost."""

import csv
import json
import os
import statistics

import jax
import pytest

from caat_jax import methods
from caat_jax.experiments import __main__ as cli
from caat_jax.experiments import cost, paper, registry, report, runner
from caat_jax.experiments.registry import Experiment, Row
from tests import helpers

TINY = (
  "suite=()",
  "num_epochs=1",
  "model_width=4",
  "batch_size=64",
  "method=natural",
  "eval.num_examples=60",
  "log_every_steps=5",
)


def tiny_experiment() -> Experiment:
  # Two cheap rows that train differently (no attack to compile in training);
  # the second borrows a paper row to check the paper column.
  rows = (
    Row("nat", "Natural", "configs/digits.py", ("optimizer.learning_rate=0.01",)),
    Row(
      "adv", "PGD-AT", "configs/digits.py", ("optimizer.learning_rate=0.2",), "PGD Adv. Training"
    ),
  )
  return Experiment("tiny", "Tiny", rows, ("pgd2",), "table1", seeds=2, overrides=TINY)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """The tiny experiment, run once: (experiment, workdir, outcomes)."""
  workdir = str(tmp_path_factory.mktemp("exp"))
  exp = tiny_experiment()
  outcomes = runner.run(exp, workdir, log=lambda *_: None)
  return exp, workdir, outcomes


@pytest.mark.slow
def test_run_writes_every_row_and_seed(finished):
  exp, workdir, outcomes = finished
  assert [(s.row.name, s.seed, o) for s, o in outcomes] == [
    ("nat", 0, "ran"),
    ("adv", 0, "ran"),
    ("nat", 1, "ran"),
    ("adv", 1, "ran"),
  ]
  for row in ("nat", "adv"):
    for seed in (0, 1):
      with open(os.path.join(workdir, row, f"seed{seed}", "eval.json")) as f:
        docs = json.load(f)
      assert [d["attack"] for d in docs] == ["pgd2"]
      assert docs[0]["num_examples"] == 60
  # the seed override reached the runs: different seeds, different models
  docs = [runner.documents(os.path.join(workdir, "adv", f"seed{k}"))["pgd2"] for k in (0, 1)]
  assert docs[0]["per_class"] != docs[1]["per_class"]


@pytest.mark.slow
def test_report_mean_and_std_by_hand(finished, tmp_path):
  exp, workdir, _ = finished
  written = report.write(exp, workdir, str(tmp_path), figures=False)
  assert [os.path.basename(p) for p in written] == ["report.md", "report.csv"]
  by_hand = {}
  for row in ("nat", "adv"):
    robust = []
    for seed in (0, 1):
      with open(os.path.join(workdir, row, f"seed{seed}", "eval.json")) as f:
        robust.append(json.load(f)[0]["avg"]["robust"])
    by_hand[row] = (statistics.mean(robust), statistics.stdev(robust))
  with open(tmp_path / "report.csv") as f:
    lines = [r for r in csv.DictReader(f) if r["column"] == "avg_robust"]
  assert by_hand["nat"] != pytest.approx(by_hand["adv"])  # the rows differ: pairing shows
  for r in lines:
    assert (float(r["mean"]), float(r["std"])) == pytest.approx(by_hand[r["row"]], abs=1e-4)
  assert {r["row"]: r["paper"] for r in lines} == {"nat": "", "adv": "56.4"}
  md = (tmp_path / "report.md").read_text()
  m, s = by_hand["adv"]
  assert f"{m:.2f} ± {s:.2f} (56.4)" in md  # the paper's Avg. Rob. of PGD-AT beside ours
  assert "| PGD-AT | 2 |" in md


@pytest.mark.slow
def test_finished_runs_skipped_and_killed_run_resumes(finished):
  exp, workdir, _ = finished
  run_dir = os.path.join(workdir, "adv", "seed1")
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = f.read()
  # A run killed after its last checkpoint but before its evaluation: it
  # resumes from the checkpoint (no step retrained) and evaluates.
  os.remove(os.path.join(run_dir, "eval.json"))
  assert runner.status(runner.plan(exp, workdir)[3], exp) == "resume"
  outcomes = runner.run(exp, workdir, log=lambda *_: None)
  assert [o for _, o in outcomes] == ["skipped", "skipped", "skipped", "ran"]
  assert os.path.isfile(os.path.join(run_dir, "eval.json"))
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    after = f.read()
  steps = lambda text: [json.loads(l)["step"] for l in text.splitlines() if '"train/' in l]
  assert steps(after) == steps(records)  # resumed at the end, nothing retrained


@pytest.mark.slow
def test_a_finished_run_with_another_config_is_not_reused(finished):
  """Running again with an override that changes training reports every run
  as failed (naming the key) instead of skipping it as done; an
  evaluation-only change still skips."""
  exp, workdir, _ = finished
  lines = []
  outcomes = runner.run(exp, workdir, extra=("optimizer.weight_decay=0.123",), log=lines.append)
  assert all(o.startswith("failed: different config") for _, o in outcomes), outcomes
  assert "optimizer.weight_decay" in lines[0] and "another --workdir" in lines[0]
  again = runner.run(exp, workdir, extra=("eval.batch_size=30",), log=lambda *_: None)
  assert [o for _, o in again] == ["skipped"] * 4


@pytest.mark.slow
def test_missing_evaluation_runs_on_the_trained_model(finished, monkeypatch):
  exp, workdir, _ = finished
  calls, cleared = [], []
  from caat_jax import evaluate

  monkeypatch.setattr(
    evaluate,
    "evaluate_checkpoint",
    lambda wd, attacks, **kw: calls.append((wd, list(attacks), dict(kw, cleared=len(cleared)))),
  )
  # each run's executables are dropped after it (one process would otherwise
  # run out of memory maps over an AutoAttack experiment)
  monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(1))
  more = Experiment(
    "tiny",
    "Tiny",
    exp.rows,
    ("pgd2", "autoattack"),
    None,
    seeds=1,
    overrides=TINY,
    eval_examples=30,
  )
  outcomes = runner.run(more, workdir, log=lambda *_: None)
  assert [o for _, o in outcomes] == ["ran", "ran"]
  assert [(os.path.relpath(c[0], workdir), c[1], c[2]["num_examples"]) for c in calls] == [
    ("nat/seed0", ["autoattack"], 30),
    ("adv/seed0", ["autoattack"], 30),
  ]
  assert [c[2]["cleared"] for c in calls] == [0, 1] and len(cleared) == 2


def test_every_experiment_builds_valid_configs():
  for exp in registry.EXPERIMENTS.values():
    if exp.unavailable:
      with pytest.raises(Exception, match="cannot run"):
        runner.run(exp, "/nonexistent")
      continue
    specs = runner.plan(exp, "/w")
    # a selection row trains each point of its grid
    per_seed = sum(len(r.select.candidates()) if r.select else 1 for r in exp.rows)
    assert len(specs) == per_seed * exp.seeds
    for spec in specs[:per_seed]:
      config = runner.build_config(spec)
      assert config.method in methods.METHODS and config.suite == ()
      if exp.name.startswith("digits"):
        epochs = {0.0: 10, 1.0: 10, 10.0: 25, 100.0: 40}[float(config.data.imbalance_factor)]
        assert config.data.name == "digits" and config.num_epochs == epochs
      final = dict(o.partition("=")[::2] for o in spec.overrides)  # the last one wins
      for key, value in final.items():  # every override took effect
        got = config
        for part in key.split("."):
          got = got[part]
        assert str(got) == value or repr(got) == value or str(got).lower() == value


def test_digits_long_tailed_runs_take_the_balanced_runs_steps():
  """The long-tailed digits counterparts scale their epochs to the smaller
  training sets: every digits run takes the same number of steps."""
  from caat_jax import data  # pylint: disable=import-outside-toplevel

  steps = set()
  for name in ("digits_table1", "digits_table7", "digits_table8"):
    exp = registry.EXPERIMENTS[name]
    config = runner.build_config(runner.plan(exp, "/w", 1, [exp.rows[0].name])[0])
    n = len(data.load_dataset(config.data).train.labels)
    steps.add((n // config.batch_size) * config.num_epochs)
  assert steps == {200}


def test_rows_match_paper_tables():
  for exp in registry.EXPERIMENTS.values():
    if exp.paper_table is not None:
      for row in exp.rows:
        if row.paper is not None:
          assert row.paper in exp.paper_table.rows, (exp.name, row.paper)


@pytest.mark.parametrize(
  "table,row,expected",
  [
    # typed from the paper's tables (seed text), two rows per table
    ("table1", "PGD Adv. Training", (15.5, 33.8, 40.9, 55.9, 56.4, 82.7)),
    ("table1", "Reinforce-CAAT", (13.7, 24.6, 15.1, 25.1, 28.8, 46.8)),
    ("table2", "TRADES (1/λ = 6)", (10.5, 23.4, 32.5, 52.5, 43.0, 76.6)),
    ("table2", "Meta-CAAT (ReMargin)", (6.6, 10.8, 24.7, 32.3, 31.3, 43.9)),
    ("table3", "PGD Adv. Training", (44.29,)),
    ("table3", "Reinforce-CAAT", (61.54,)),
    ("table4", "FRL (ReMargin)", (43.12,)),
    ("table4", "Meta-CAAT (Grad-based)", (49.87,)),
    ("table5", "TRADES (1/λ = 1)", (15.6, 36.6, 31.0, 54.2, 46.5, 61.7)),
    ("table5", "Meta-CAAT (Grad-based)", (14.6, 25.2, 13.9, 24.5, 28.5, 45.4)),
    ("table6", "FRL (ReWeight)", (15.5, 29.5, 34.8, 49.7, 50.3, 75.5)),
    ("table6", "Reinforce-CAAT", (15.3, 28.9, 19.4, 32.0, 34.7, 59.2)),
    ("table7", "PGD Adv. Training", (20.1, 49.4, 42.8, 49.6, 62.9, 93.0)),
    ("table7", "Meta-CAAT (ReMargin)", (16.2, 34.2, 13.7, 23.2, 29.9, 57.4)),
    ("table8", "TRADES (1/λ = 6)", (39.2, 83.2, 16.7, 34.3, 55.9, 86.1)),
    ("table8", "FRL (ReWeight+ReMargin)", (19.2, 48.3, 36.8, 52.5, 56.0, 89.4)),
    ("table9", "Without", (20.5, 20.1, 40.6)),
    ("table9", "Reinforce-CAAT", (16.3, 15.9, 32.2)),
  ],
)
def test_paper_numbers_spot_checked(table, row, expected):
  assert paper.TABLES[table].rows[row] == expected


def test_emit_one_job_per_row_and_seed(tmp_path):
  exp = registry.get("digits_table6")
  lines = runner.emit(exp, "/runs/t6", "slurm", seeds=2, rows=["trades-b6", "meta-caat-grad"])
  assert len(lines) == 4
  assert lines[0].startswith(
    "sbatch --job-name=digits_table6-trades-b6-s0 launch/slurm.sbatch "
    "configs/digits.py /runs/t6/trades-b6/seed0 "
  )
  for flag in (
    "--config.data.noise_type=uniform",
    "--config.data.noise_rate=0.4",
    "--config.trades.beta=6.0",
    "--config.seed=0",
    "--config.num_epochs=10",
  ):
    assert flag in lines[0]
  assert "configs/digits_meta_caat.py /runs/t6/meta-caat-grad/seed1" in lines[3]
  assert "--config.caat.bound=grad" in lines[3] and "--config.seed=1" in lines[3]
  pod = runner.emit(registry.get("table3"), "gs://b/t1", "tpu_pod", seeds=1, rows=["pgd-at"])
  assert pod[0].startswith(
    "WORKDIR=gs://b/t1/pgd-at/seed0 launch/tpu_pod.sh run configs/cifar10.py"
  )
  assert (
    pod[1] == "python -m caat_jax.evaluate --workdir=gs://b/t1/pgd-at/seed0 --attacks=autoattack"
  )
  with pytest.raises(ValueError, match="valid: shell, slurm, tpu_pod"):
    runner.emit(exp, "/r", "kubernetes")


def test_cli_errors_are_one_line(capsys, tmp_path):
  assert cli.main(["run", "table99", f"--workdir={tmp_path}"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: no experiment 'table99'; valid: table1, digits_table1")
  assert cli.main(["report", "digits_table1", f"--workdir={tmp_path}"]) == 1
  assert "no finished run of digits_table1" in capsys.readouterr().err
  assert cli.main(["run", "digits_table1", f"--workdir={tmp_path}", "--rows=nope"]) == 1
  assert "has no row 'nope'" in capsys.readouterr().err
  assert cli.main(["run", "digits_table1", f"--workdir={tmp_path}", "--config.nope=1"]) == 1
  assert "no config key 'nope'" in capsys.readouterr().err
  assert not os.listdir(tmp_path)  # nothing started


def test_h200_throughput_is_the_benchmarked_pgd_at_step():
  """The measured H200 figure is PGD-AT's forward units on configs/cifar10.py
  (as the method accounts for them now) x the benchmarked images/s x FLOPs
  per forward: a change to the pass-count model must re-derive it."""
  config = helpers.config_module("cifar10").get_config()
  config.method = "pgd_at"
  assert methods.get(config.method).cost(config) == cost.H200_BENCH["forward_units"]
  flops = cost.FORWARD_FLOPS[("preact_resnet18", "cifar10")]
  expected = cost.H200_BENCH["forward_units"] * cost.H200_BENCH["images_per_s"] * flops
  assert cost.THROUGHPUT["H200"] == pytest.approx(expected)
  assert 100e12 < cost.THROUGHPUT["H200"] < 120e12  # docs/benchmarks.md: about 110 TFLOP/s


def test_cost_is_the_pass_count_model():
  exp = registry.get("digits_table6")
  one = Experiment(
    "one", "one", (exp.row("trades-b6"),), ("pgd20",), overrides=exp.overrides, seeds=3
  )
  config = runner.build_config(runner.plan(one, "/w")[0])
  per_forward = cost.FORWARD_FLOPS[("small_cnn", "digits")]
  by_hand = ((10 * 2 + 1 + 6) * 10 * cost.TRAIN_SIZE["digits"] + 41 * 360) * per_forward * 3
  assert methods.get(config.method).cost(config) == 27
  got = cost.estimate(one)
  assert got["runs"] == 3
  assert got["H200"] * 3600 * cost.THROUGHPUT["H200"] == pytest.approx(by_hand)
  text = cost.listing([registry.get("table4"), one])
  assert "not runnable" not in text and "3 runs" in text  # Table 4 streams imagenet2012
  assert "table4" in text
