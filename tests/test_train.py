"""End to end: configs/digits.py shrunk to seconds, through the real trainer."""

import json
import os

import numpy as np
import pytest

from caat_jax import train
from tests.helpers import digits_config


@pytest.fixture(scope="module")
def pgd_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pgd_at"))
  config = digits_config(method="pgd_at", num_epochs=2)
  docs = train.train_and_evaluate(config, workdir)
  return config, workdir, docs


def test_outputs_are_written(pgd_run):
  config, workdir, docs = pgd_run
  run = train.Run(config)
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_recs = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_recs][-1] == run.total_steps
  assert all(np.isfinite(r["train/loss"]) for r in train_recs)
  assert any(k.startswith("eval/pgd3/") for k in records[-1])
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  assert saved == docs and [d["attack"] for d in docs] == ["pgd3"]
  d = docs[0]
  assert d["num_examples"] == 200 and len(d["per_class"]["robust"]) == 10
  assert 0.0 <= d["avg"]["natural"] <= d["avg"]["robust"] <= 100.0
  assert d["avg"]["natural"] < 50.0  # it learned something in 2 epochs
  assert os.listdir(os.path.join(workdir, "tb"))
  assert os.listdir(os.path.join(workdir, "checkpoints"))


def test_finished_run_resumes_without_training_again(pgd_run):
  config, workdir, docs = pgd_run
  n_lines = len(open(os.path.join(workdir, "metrics.jsonl")).readlines())
  again = train.train_and_evaluate(config, workdir)
  assert again == docs  # same checkpoint, same deterministic evaluation
  new_lines = open(os.path.join(workdir, "metrics.jsonl")).readlines()[n_lines:]
  assert all("train/loss" not in json.loads(l) for l in new_lines)


def test_init_from_loads_the_classifier(pgd_run, tmp_path):
  _, workdir, docs = pgd_run
  config = digits_config(method="natural", init_from=workdir)
  run = train.Run(config)
  state = run.init_state()
  fresh = train.Run(digits_config(method="natural")).init_state()
  src = run.parallel.replicate(state)
  outcomes = run.evaluate(src)
  # the hot-started classifier evaluates exactly as the run it came from
  assert outcomes[0]["per_class"] == docs[0]["per_class"]
  assert not np.allclose(state.params["head"]["kernel"], fresh.params["head"]["kernel"])
  assert int(state.step) == 0  # optimiser and step start fresh


def test_trades_and_natural_run(tmp_path):
  for method in ("natural", "trades"):
    docs = train.train_and_evaluate(digits_config(method=method), str(tmp_path / method))
    assert np.isfinite(docs[0]["avg"]["robust"])
