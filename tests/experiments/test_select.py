"""``experiments.select``: a row's grid trained in full and picked per seed
by a criterion measured on the meta set, never on the test set.

The runner tests replace training and the criterion's evaluation by fakes
that write documents (no JAX work), so what the selector is given and what
is retrained on resume can be asserted exactly; the slow test runs a tiny
grid for real and watches which split the evaluator is handed."""

import csv
import json
import os

import pytest

from caat_jax.experiments import report, runner, select
from caat_jax.experiments.registry import Experiment, Row
from caat_jax.experiments.select import Selection

GRID = (0.01, 0.05, 0.2)
# The criterion (meta-set robust error) per seed and learning rate; its
# argmin by hand: seed 0 -> 0.05, seed 1 -> 0.01.
META = {0: {0.01: 30.0, 0.05: 12.5, 0.2: 20.0}, 1: {0.01: 10.0, 0.05: 40.0, 0.2: 15.0}}
HAND = {0: "optimizer.learning_rate=0.05", 1: "optimizer.learning_rate=0.01"}


def _test_robust(lr, seed):
  # Test-set error, ordered otherwise than the criterion (its argmin is 0.2
  # for every seed): a selector reading it would choose differently.
  return 60.0 - 100.0 * lr + seed


def _doc(robust, **extra):
  return dict(
    attack="pgd20",
    method="natural",
    avg={"natural": 1.0, "boundary": robust - 1.0, "robust": robust},
    worst={"natural": 2.0, "boundary": robust, "robust": robust + 5.0},
    per_class={"natural": [1.0] * 10, "boundary": [1.0] * 10, "robust": [robust] * 10},
    **extra,
  )


def _experiment(seeds=2):
  row = Row(
    "nat",
    "Natural, lr selected",
    "configs/digits.py",
    ("method=natural",),
    select=Selection({"optimizer.learning_rate": GRID}),
  )
  return Experiment("tiny_select", "Tiny", (row,), ("pgd20",), None, seeds=seeds)


@pytest.fixture
def fakes(monkeypatch):
  """Fake training and criterion evaluation; records calls and what
  ``select.choose`` is given."""
  from caat_jax import train  # pylint: disable=import-outside-toplevel

  calls = {"train": [], "criterion": [], "choose": [], "interrupt_at": None}

  def fake_train(config, workdir):
    key = (float(config.optimizer.learning_rate), int(config.seed))
    if calls["interrupt_at"] == key:
      calls["interrupt_at"] = None
      raise KeyboardInterrupt
    calls["train"].append(key)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump([_doc(_test_robust(*key))], f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"lr": key[0], "seed": key[1]}, f)

  def fake_criterion(run_dir, criterion):
    with open(os.path.join(run_dir, "config.json")) as f:
      c = json.load(f)
    calls["criterion"].append((c["lr"], c["seed"]))
    doc = _doc(META[c["seed"]][c["lr"]], split="meta", num_examples=100, criterion=criterion)
    with open(select.criterion_path(run_dir, criterion), "w") as f:
      json.dump(doc, f)
    return doc

  real_choose = select.choose

  def spy_choose(docs, criterion):
    calls["choose"].append({t: dict(d) for t, d in docs.items()})
    return real_choose(docs, criterion)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(select, "evaluate_criterion", fake_criterion)
  monkeypatch.setattr(select, "choose", spy_choose)
  return calls


def test_choose_is_the_hand_argmin_and_ties_go_to_grid_order():
  for seed, by_lr in META.items():
    docs = {f"lr={lr}": _doc(v, split="meta") for lr, v in by_lr.items()}
    best = min(by_lr, key=by_lr.get)  # by hand
    assert select.choose(docs, "meta_pgd20") == f"lr={best}"
    assert HAND[seed] == f"optimizer.learning_rate={best}"
  tie = {"a": _doc(5.0, split="meta"), "b": _doc(5.0, split="meta"), "c": _doc(6.0, split="meta")}
  assert select.choose(tie, "meta_pgd20") == "a"


def test_the_test_split_is_refused():
  with pytest.raises(ValueError, match="split 'test'; criterion 'meta_pgd20' reads only 'meta'"):
    select.choose({"a": _doc(1.0, split="test")}, "meta_pgd20")
  with pytest.raises(ValueError, match="split None"):  # an end-of-training (test) document
    select.choose({"a": _doc(1.0)}, "meta_pgd20")
  assert all(c[0] not in select.FORBIDDEN_SPLITS for c in select.CRITERIA.values())


def test_selection_bad_input_is_named():
  with pytest.raises(ValueError, match="select criterion 'test_pgd20'; valid: meta_pgd20"):
    Selection({"caat.lam": (1.0,)}, "test_pgd20")
  with pytest.raises(ValueError, match="every key needs at least one value"):
    Selection({"caat.lam": ()})


def test_candidates_are_the_grid_in_order():
  s = Selection({"caat.lam": (2 / 3, 1.0), "caat.bound": ("grad",)})
  assert s.candidates() == [
    ("caat.lam=0.6667,caat.bound=grad", ("caat.lam=0.6666666666666666", "caat.bound='grad'")),
    ("caat.lam=1,caat.bound=grad", ("caat.lam=1.0", "caat.bound='grad'")),
  ]
  assert s.text() == "caat.lam in {0.6667, 1}; caat.bound in {grad}"


def test_runner_chooses_by_the_meta_criterion_only(fakes, tmp_path):
  workdir = str(tmp_path)
  exp = _experiment()
  outcomes = runner.run(exp, workdir, log=lambda *_: None)
  assert [o for _, o in outcomes] == ["ran"] * 6
  assert sorted(fakes["criterion"]) == sorted((lr, s) for s in (0, 1) for lr in GRID)
  # The selector saw each seed's three meta-set documents and nothing else.
  assert len(fakes["choose"]) == 2
  for given in fakes["choose"]:
    assert len(given) == 3
    assert all(d["split"] == "meta" and d["num_examples"] == 100 for d in given.values())
  for seed in (0, 1):
    with open(select.record_path(os.path.join(workdir, "nat"), seed)) as f:
      rec = json.load(f)
    assert rec["chosen"] == HAND[seed]
    assert rec["values"] == {f"optimizer.learning_rate={lr:g}": v for lr, v in META[seed].items()}

  # The report shows the chosen value and the chosen model's test numbers.
  report.write(exp, workdir, str(tmp_path / "out"), figures=False)
  with open(tmp_path / "out" / "report.csv") as f:
    r = next(r for r in csv.DictReader(f) if r["column"] == "avg_robust")
  lrs = [float(HAND[s].split("=")[1]) for s in (0, 1)]
  assert r["chosen"] == ";".join(HAND[s] for s in (0, 1))
  assert [float(v) for v in r["values"].split(";")] == [
    _test_robust(lr, s) for s, lr in enumerate(lrs)
  ]
  md = (tmp_path / "out" / "report.md").read_text()
  assert f"chosen per seed: seed 0: {HAND[0]}, seed 1: {HAND[1]}" in md
  assert "class-average PGD-20 robust error on the clean meta set" in md


def test_resume_mid_grid_retrains_nothing_done(fakes, tmp_path):
  workdir = str(tmp_path)
  exp = _experiment(seeds=1)
  fakes["interrupt_at"] = (0.05, 0)  # killed at the second grid point
  with pytest.raises(KeyboardInterrupt):
    runner.run(exp, workdir, log=lambda *_: None)
  assert fakes["train"] == [(0.01, 0)]
  assert not os.path.exists(select.record_path(os.path.join(workdir, "nat"), 0))
  # the report names the row's seed as incomplete, not as a choice
  messages = []
  with pytest.raises(FileNotFoundError, match="no finished run"):
    report.write(exp, workdir, str(tmp_path / "out"), figures=False, on_problem=messages.append)
  outcomes = runner.run(exp, workdir, log=lambda *_: None)
  assert [o for _, o in outcomes] == ["skipped", "ran", "ran"]
  assert fakes["train"] == [(0.01, 0), (0.05, 0), (0.2, 0)]  # 0.01 not retrained
  assert fakes["criterion"] == [(0.01, 0), (0.05, 0), (0.2, 0)]  # nor re-measured
  with open(select.record_path(os.path.join(workdir, "nat"), 0)) as f:
    assert json.load(f)["chosen"] == HAND[0]
  # a candidate trained but not measured (killed between the two) is measured only
  os.remove(select.criterion_path(select.candidate_dir(workdir, "nat", HAND[0], 0), "meta_pgd20"))
  outcomes = runner.run(exp, workdir, log=lambda *_: None)
  assert [o for _, o in outcomes] == ["skipped", "ran", "skipped"]
  assert len(fakes["train"]) == 3 and fakes["criterion"][-1] == (0.05, 0)


@pytest.mark.slow
def test_a_tiny_grid_for_real_hands_the_evaluator_the_meta_split(tmp_path, monkeypatch):
  from caat_jax.evaluators import evaluator  # pylint: disable=import-outside-toplevel

  seen = []
  real = evaluator.Evaluator.evaluate

  def spy(self, variables, split, *args, **kwargs):
    seen.append(len(split.labels))
    return real(self, variables, split, *args, **kwargs)

  monkeypatch.setattr(evaluator.Evaluator, "evaluate", spy)
  row = Row(
    "nat",
    "Natural",
    "configs/digits.py",
    ("method=natural",),
    select=Selection({"optimizer.learning_rate": (0.01, 0.2)}),
  )
  tiny = ("suite=()", "num_epochs=1", "model_width=4", "eval.num_examples=60")
  exp = Experiment("tiny_select", "Tiny", (row,), ("pgd2",), None, seeds=1, overrides=tiny)
  chooser = []
  real_choose = select.choose
  monkeypatch.setattr(select, "choose", lambda d, c: chooser.append(d) or real_choose(d, c))
  runner.run(exp, str(tmp_path), log=lambda *_: None)
  # per grid point: end of training on the test split (360 images), then the
  # criterion on the meta set (10 per class)
  assert seen == [360, 100, 360, 100]
  (given,) = chooser
  assert [(d["split"], d["num_examples"]) for d in given.values()] == [("meta", 100)] * 2
  values = {t: d["avg"]["robust"] for t, d in given.items()}
  with open(select.record_path(os.path.join(str(tmp_path), "nat"), 0)) as f:
    assert json.load(f)["chosen"] == min(values, key=values.get)


def test_the_papers_lambda_protocol_is_registered():
  from caat_jax.experiments import registry  # pylint: disable=import-outside-toplevel

  for name in ("digits_table1", "digits_table5", "digits_table6", "digits_table7", "digits_table8"):
    exp = registry.get(name)
    for base in ("meta-caat-grad", "meta-caat-remargin"):
      fixed, chosen = exp.row(base), exp.row(base + "-select")
      assert fixed.label.endswith("λ = 1 fixed") and fixed.paper is None
      assert chosen.paper in exp.paper_table.rows and "selected" in chosen.label
      assert chosen.select.grid == (("caat.lam", (2 / 3, 1.0, 1.5, 6.0)),)
      assert chosen.select.criterion == "meta_pgd20"
      assert chosen.overrides == fixed.overrides  # the grid is the only difference
    for text in ("10 images per class", "from scratch", "λ = 0.1", "other classes"):
      assert text in exp.note
  fig15 = registry.get("digits_fig15")
  assert "fixed bound" in fig15.row("meta-caat-all").note
