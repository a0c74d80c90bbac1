"""End to end: configs/digits.py shrunk to seconds, through the real trainer."""

import json
import os
import shutil

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


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.readlines()


def test_finished_run_resumes_without_training_or_evaluating_again(pgd_run, monkeypatch):
  config, workdir, docs = pgd_run
  before = _lines(workdir)

  def no_eval(*args, **kwargs):
    raise AssertionError("a finished run evaluated again under the same config.eval")

  monkeypatch.setattr(train.Run, "evaluate", no_eval)
  again = train.train_and_evaluate(config, workdir)
  assert again == docs  # eval.json, reused
  assert _lines(workdir) == before  # nothing appended: no duplicate final record


def test_finished_run_with_a_new_eval_config_replaces_its_final_record(pgd_run, tmp_path):
  config, workdir, docs = pgd_run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  before = [json.loads(l) for l in _lines(copy)]
  config = config.copy_and_resolve_references()
  config.eval.eps = 0.05
  again = train.train_and_evaluate(config, copy)
  assert [d["eps"] for d in again] == [0.05] and again[0]["avg"] != docs[0]["avg"]
  after = [json.loads(l) for l in _lines(copy)]
  # the old final evaluation is replaced by the new one, everything else kept
  assert after[:-1] == before[:-1]
  assert after[-1]["step"] == before[-1]["step"] and "eval/pgd3/robust_avg" in after[-1]
  assert after[-1]["eval/pgd3/robust_avg"] == again[0]["avg"]["robust"]
  with open(os.path.join(copy, "eval.json")) as f:
    assert json.load(f) == again


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


@pytest.mark.parametrize("method", ["meta_caat", "frl"])
def test_each_step_is_traced_once_for_the_whole_run(method, monkeypatch, tmp_path):
  """Two epochs with logging, checkpoints, per-epoch evaluation and FRL's
  epoch-end hook must not retrace the train step or an evaluation step
  (a retrace would recompile every epoch: minutes on a large model)."""
  from caat_jax import methods  # pylint: disable=g-import-not-at-top
  from caat_jax.evaluators import named_attacks  # pylint: disable=g-import-not-at-top

  traces = {"train": 0, "eval": []}

  def counting(name, fn):
    def traced(*args, **kwargs):
      if name == "train":
        traces["train"] += 1
      else:  # one trace per distinct evaluation setting is expected
        traces["eval"].append((kwargs["eps"], tuple(kwargs["attack_names"])))
      return fn(*args, **kwargs)

    return traced

  monkeypatch.setattr(methods, "train_step", counting("train", methods.train_step))
  monkeypatch.setattr(named_attacks, "eval_fn", counting("eval", named_attacks.eval_fn))
  config = digits_config(method=method, num_epochs=2, eval_every=1, checkpoint_every_steps=7)
  train.train_and_evaluate(config, str(tmp_path))
  assert traces["train"] == 1
  assert traces["eval"] and len(traces["eval"]) == len(set(traces["eval"]))
