"""caat_jax.plots on a synthetic experiment (two rows x two seeds, the key
names real runs log): the figures draw the means over seeds, read back from
the matplotlib objects; files are written; absent data is skipped; no runs is
one clear error. No training here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.container import BarContainer

from caat_jax import plots
from tests.helpers import ROOT

STEPS = (10, 20, 30)
C = 3  # classes


def _record(row: int, seed: int, step: int, noisy: bool = True) -> dict:
  """Training record of a Reinforce-like row (0) or a Meta-like row (1)."""
  v = lambda base: round(base + 0.01 * step + 0.1 * seed + 0.5 * row, 6)
  rec = {
    "step": step,
    "epoch": step // 20,
    "lr": 0.1,
    "train/loss": v(1.0),
    "train/clean_acc": v(0.2),
    "train/adv_acc": v(0.1),
    "train/meta_loss": [v(2.0)],
    "train/adv_ratio_per_class": [v(0.1 * k) for k in range(C)],
    "train/eps_per_class": [v(0.01 * k) / 10 for k in range(C)],
    "train/adv_ratio_clean_noisy": [v(0.3), v(0.6) if noisy else None],
    "train/eps_clean_noisy": [v(0.02) / 10, v(0.04) / 10 if noisy else None],
  }
  if row == 0:
    # Fig. 8c: 4 bound bins; bin 1 never filled, bin 3 empty at step 30
    late = None if step == 30 else 0
    rec.update(
      {
        "train/margin_by_bound": [v(0.1), None, v(0.2), late if late is None else v(0.4)],
        "train/bound_by_bound_bin": [
          0.01 + 0.001 * seed + 0.0001 * step,
          None,
          0.03 + 0.001 * seed,
          late if late is None else 0.04,
        ],
      }
    )
    rec.update(
      {
        "train/entropy": v(3.0),
        "train/entropy_direction": v(0.6),
        "train/entropy_bound": v(2.4),
        "train/p_adv_clean_noisy": [v(0.5), v(0.4)],
        "train/eps_direction_clean_noisy": [v(0.01), v(0.02), v(0.03), v(0.04)],
      }
    )
  return rec


def _doc(row: int, seed: int, attack: str = "pgd20") -> dict:
  nat = [10.0 * (k + 1) + 5 * seed + row for k in range(C)]
  rob = [50.0 + 10 * k + 3 * seed + row for k in range(C)]
  return {
    "method": f"m{row}",
    "dataset": "digits",
    "model": "small_cnn",
    "attack": attack,
    "eps": 0.1,
    "num_examples": 90,
    "avg": {"natural": float(np.mean(nat)), "boundary": 0.0, "robust": float(np.mean(rob))},
    "worst": {"natural": max(nat), "boundary": 0.0, "robust": max(rob)},
    "per_class": {"natural": nat, "boundary": [r - n for r, n in zip(rob, nat)], "robust": rob},
  }


def _write_run(d, row: int, seed: int, noisy: bool = True, records=None):
  os.makedirs(d, exist_ok=True)
  records = records or [_record(row, seed, t, noisy) for t in STEPS]
  eval_rec = {"step": STEPS[-1], "epoch": 1, "eval/pgd20/natural_avg": 1.0}
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for r in records + [eval_rec]:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 40, "train/lo')  # a line cut short by a kill
  with open(os.path.join(d, "eval.json"), "w") as f:
    json.dump([_doc(row, seed)], f)


@pytest.fixture
def experiment(tmp_path):
  root = tmp_path / "exp"
  for row, name in enumerate(("rowA", "rowB")):
    for seed in (0, 1):
      _write_run(str(root / name / f"seed{seed}"), row, seed)
  (root / "rowA" / "seed0" / "checkpoints").mkdir()
  return str(root)


def _mean_std(row, fn):
  vals = np.array([fn(seed) for seed in (0, 1)], float)
  return vals.mean(0), vals.std(0, ddof=1)


def _lines(ax):
  return {l.get_label(): l for l in ax.lines}


def test_draw_all_writes_png_and_svg(experiment, tmp_path, capsys):
  out = str(tmp_path / "figs")
  paths = plots.draw_all(experiment, out)
  stems = (
    "per_class_errors_digits_pgd20",
    "training_curves",
    "strategy_per_class",
    "clean_vs_corrupted",
    "bound_vs_margin",
  )
  assert sorted(paths) == sorted(
    os.path.join(out, f"{s}.{e}") for s in stems for e in ("png", "svg")
  )
  for p in paths:
    with open(p, "rb") as f:
      head = f.read(400)
    assert head.startswith(b"\x89PNG") if p.endswith(".png") else b"<svg" in head
  printed = capsys.readouterr().out
  assert "skipped" not in printed


def test_bound_vs_margin_is_the_late_training_mean_per_bin(experiment):
  """Fig. 8c: each bin's margin and bound averaged over the records past half
  of training (steps 20 and 30 here), then over seeds; bins never filled are
  left out; only the row that logs it is drawn."""
  groups = plots.group_runs(plots.discover_runs(experiment))
  (ax,) = plots.draw_bound_vs_margin(groups)["bound_vs_margin"].axes
  (bars,) = ax.containers  # one errorbar container: one row
  line = bars.lines[0]
  assert bars.get_label() == "rowA (2 seeds)"
  v = lambda base, step, seed: round(base + 0.01 * step + 0.1 * seed, 6)
  margin = {
    0: lambda s: (v(0.1, 20, s) + v(0.1, 30, s)) / 2,
    2: lambda s: (v(0.2, 20, s) + v(0.2, 30, s)) / 2,
    3: lambda s: v(0.4, 20, s),
  }  # None at step 30: one record
  bound = {
    0: lambda s: 0.01 + 0.001 * s + 0.0001 * 25,
    2: lambda s: 0.03 + 0.001 * s,
    3: lambda s: 0.04,
  }
  want_x = [_mean_std(0, bound[k])[0] * 255 for k in (0, 2, 3)]
  want_y = [_mean_std(0, margin[k])[0] for k in (0, 2, 3)]
  np.testing.assert_allclose(line.get_xdata(), want_x, rtol=1e-9)
  np.testing.assert_allclose(line.get_ydata(), want_y, rtol=1e-9)
  with pytest.raises(plots.Skip, match="margin_by_bound"):
    plots.draw_bound_vs_margin([g for g in groups if g.row == "rowB"])


def test_discovery_rows_seeds_and_labels(experiment):
  runs = plots.discover_runs(experiment)
  assert sorted((r.row, r.seed) for r in runs) == [
    ("rowA", 0),
    ("rowA", 1),
    ("rowB", 0),
    ("rowB", 1),
  ]
  assert all(len(r.records) == len(STEPS) + 1 for r in runs)  # the cut line is dropped
  groups = plots.group_runs(runs, {"rowB": "Method B", "rowA": "Method A"})
  assert [(g.row, g.label, g.legend) for g in groups] == [
    ("rowB", "Method B", "Method B (2 seeds)"),
    ("rowA", "Method A", "Method A (2 seeds)"),
  ]
  # one run given directly: its row is its directory, or the parent of seed<k>
  one = plots.discover_runs(os.path.join(experiment, "rowA", "seed1"))
  assert [(r.row, r.seed) for r in one] == [("rowA", 1)]


def test_eval_attack_file_replaces_eval_json(tmp_path):
  d = tmp_path / "run"
  _write_run(str(d), 0, 0)
  better = _doc(0, 0)
  better["per_class"]["natural"] = [1.0, 2.0, 3.0]
  (d / "eval_pgd20.json").write_text(json.dumps(better))
  (d / "eval_sanity.json").write_text(json.dumps({"eps_sweep": {}}))
  (d / "eval_apgd-ce.json").write_text(json.dumps(_doc(0, 0, "apgd-ce")))
  (run,) = plots.discover_runs(str(d))
  assert run.row == "run"
  assert {doc["attack"]: doc["per_class"]["natural"] for doc in run.eval_docs} == {
    "pgd20": [1.0, 2.0, 3.0],
    "apgd-ce": _doc(0, 0)["per_class"]["natural"],
  }


def test_per_class_bars_are_means_over_seeds(experiment):
  groups = plots.group_runs(plots.discover_runs(experiment), {"rowB": "B", "rowA": "A"})
  figs = plots.draw_per_class_errors(groups)
  assert list(figs) == ["per_class_errors_digits_pgd20"]
  nat_ax, rob_ax = figs["per_class_errors_digits_pgd20"].axes
  assert nat_ax.get_xlabel() == "class" and "%" in nat_ax.get_ylabel()
  assert "natural" in nat_ax.get_title() and "robust" in rob_ax.get_title()
  assert "pgd20" in rob_ax.get_title() and "25.5/255" in rob_ax.get_title()
  for ax, kind in ((nat_ax, "natural"), (rob_ax, "robust")):
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2
    for bar, row in zip(bars, (1, 0)):  # B (row 1) first, as the labels order them
      mean, std = _mean_std(row, lambda s, row=row: _doc(row, s)["per_class"][kind])
      np.testing.assert_allclose([p.get_height() for p in bar.patches], mean)
      segs = bar.errorbar.lines[2][0].get_segments()
      np.testing.assert_allclose([s[1][1] - s[0][1] for s in segs], 2 * std)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("B (2 seeds)") and legend[1].startswith("A (2 seeds)")
    mean_b, _ = _mean_std(1, lambda s: _doc(1, s)["per_class"][kind])
    assert f"class mean {mean_b.mean():.1f}%" in legend[0]


def test_training_curves_are_means_over_seeds(experiment):
  groups = plots.group_runs(plots.discover_runs(experiment))
  fig = plots.draw_training_curves(groups)["training_curves"]
  titles = [ax.get_title() for ax in fig.axes if ax.axison]
  assert titles == [
    "training loss",
    "accuracy on the training batches",
    "meta loss (meta batch, at meta-update steps)",
    "policy entropy (Reinforce strategy)",
  ]
  loss, acc, meta, ent = [ax for ax in fig.axes if ax.axison]
  assert all(ax.get_xlabel() == "training step" for ax in (loss, acc, meta, ent))
  assert acc.get_ylabel() == "accuracy (%)"
  for row, name in ((0, "rowA"), (1, "rowB")):
    recs = lambda s, row=row: [_record(row, s, t) for t in STEPS]
    line = _lines(loss)[f"{name} (2 seeds)"]
    np.testing.assert_allclose(line.get_xdata(), STEPS)
    np.testing.assert_allclose(
      line.get_ydata(), _mean_std(row, lambda s: [r["train/loss"] for r in recs(s)])[0]
    )
    np.testing.assert_allclose(
      _lines(acc)[f"{name} (2 seeds): adversarial"].get_ydata(),
      100 * _mean_std(row, lambda s: [r["train/adv_acc"] for r in recs(s)])[0],
    )
    np.testing.assert_allclose(
      _lines(meta)[f"{name} (2 seeds)"].get_ydata(),
      _mean_std(row, lambda s: [r["train/meta_loss"][0] for r in recs(s)])[0],
    )
  # only row A logs a policy: its three entropies, row B draws none
  assert sorted(_lines(ent)) == [
    "rowA (2 seeds): bound",
    "rowA (2 seeds): direction",
    "rowA (2 seeds): joint (direction, bound)",
  ]


def test_strategy_per_class_lines(experiment):
  groups = plots.group_runs(plots.discover_runs(experiment))
  fig = plots.draw_strategy_per_class(groups)["strategy_per_class"]
  assert len(fig.axes) == 4  # two rows x (ratio, bound)
  ratio_b, eps_b = fig.axes[2], fig.axes[3]
  assert ratio_b.get_title() == "rowB (2 seeds): adversary ratio per class"
  assert "1/255" in eps_b.get_ylabel()
  for k in range(C):
    recs = lambda s, k=k: [_record(1, s, t)["train/eps_per_class"][k] for t in STEPS]
    np.testing.assert_allclose(_lines(eps_b)[str(k)].get_ydata(), 255 * _mean_std(1, recs)[0])
    recs = lambda s, k=k: [_record(1, s, t)["train/adv_ratio_per_class"][k] for t in STEPS]
    np.testing.assert_allclose(_lines(ratio_b)[str(k)].get_ydata(), _mean_std(1, recs)[0])


def test_clean_vs_corrupted_series(experiment):
  groups = plots.group_runs(plots.discover_runs(experiment))
  fig = plots.draw_clean_vs_corrupted(groups)["clean_vs_corrupted"]
  grid = np.array(fig.axes).reshape(2, 4)  # rows A, B x (ratio, bound, p_adv, by direction)
  for row in (0, 1):
    ratio, bound = grid[row][0], grid[row][1]
    for entry, name in ((0, "clean labels"), (1, "corrupted labels")):
      want = _mean_std(
        row, lambda s: [_record(row, s, t)["train/adv_ratio_clean_noisy"][entry] for t in STEPS]
      )[0]
      np.testing.assert_allclose(_lines(ratio)[name].get_ydata(), want)
      want = _mean_std(
        row, lambda s: [_record(row, s, t)["train/eps_clean_noisy"][entry] for t in STEPS]
      )[0]
      np.testing.assert_allclose(_lines(bound)[name].get_ydata(), 255 * want)
  direction = _lines(grid[0][3])
  want = _mean_std(
    0, lambda s: [_record(0, s, t)["train/eps_direction_clean_noisy"][3] for t in STEPS]
  )[0]
  np.testing.assert_allclose(direction["corrupted, anti-adversaries"].get_ydata(), 255 * want)
  assert not grid[1][2].axison and not grid[1][3].axison  # row B logs no policy


def test_missing_keys_skip_figures(tmp_path, capsys):
  # a natural-training-like run: loss and clean accuracy only, no label noise
  root = str(tmp_path / "nat")
  records = [{"step": t, "train/loss": 1.0 / t, "train/clean_acc": 0.5} for t in STEPS]
  _write_run(os.path.join(root, "seed0"), 0, 0, records=records)
  noisefree = str(tmp_path / "clean")
  _write_run(noisefree, 1, 0, noisy=False)
  paths = plots.draw_all(root)  # into root/figures
  assert sorted(paths) == sorted(
    os.path.join(root, "figures", f"{s}.{e}")
    for s in ("per_class_errors_digits_pgd20", "training_curves")
    for e in ("png", "svg")
  )
  assert all(os.path.getsize(p) > 0 for p in paths)
  assert len(plots.discover_runs(root)) == 1  # root/figures is not taken for a run
  lines = capsys.readouterr().out.splitlines()
  per_class = [l for l in lines if l.startswith("skipped adversary ratio and bound per class")]
  assert len(per_class) == 1 and "train/adv_ratio_per_class" in per_class[0]
  assert any(
    l.startswith("skipped clean vs corrupted") and "train/eps_clean_noisy" in l for l in lines
  )
  groups = plots.group_runs(plots.discover_runs(root))
  fig = plots.draw_training_curves(groups)["training_curves"]
  assert [ax.get_title() for ax in fig.axes if ax.axison] == [
    "training loss",
    "accuracy on the training batches",
  ]
  with pytest.raises(plots.Skip, match="no corrupted training labels"):
    plots.draw_clean_vs_corrupted(plots.group_runs(plots.discover_runs(noisefree)))


def test_no_runs_is_one_line_error(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(plots.NoRunsError, match="empty: no run found"):
    plots.draw_all(str(tmp_path / "empty"))
  with pytest.raises(plots.NoRunsError, match="missing: no such directory"):
    plots.discover_runs(str(tmp_path / "missing"))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run(
    [sys.executable, "-m", "caat_jax.plots", f"--workdir={tmp_path}/missing"],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=60,
  )
  assert p.returncode == 1
  want = f"error: --workdir={tmp_path}/missing: no such directory"
  assert p.stderr.strip().splitlines() == [want]
  assert not os.path.exists(tmp_path / "missing")


def test_only_labelled_rows_and_formats(experiment, tmp_path, monkeypatch):
  """An experiment's report draws its own rows only (its workdir may hold
  other experiments' runs), in the formats asked for."""
  out = str(tmp_path / "figs")
  paths = plots.draw_all(
    experiment, out, labels={"rowB": "B only"}, only_labelled=True, formats=("png",)
  )
  assert sorted(os.path.basename(p) for p in paths) == sorted(
    f"{s}.png"
    for s in (
      "per_class_errors_digits_pgd20",
      "training_curves",
      "strategy_per_class",
      "clean_vs_corrupted",
    )
  )
  seen = []

  def probe(groups):
    seen.append([g.label for g in groups])
    raise plots.Skip("probe")

  monkeypatch.setattr(plots, "FIGURES", [("probe", probe)])
  plots.draw_all(experiment, out, labels={"rowB": "B only"}, only_labelled=True)
  plots.draw_all(experiment, out, labels={"rowB": "B only"})
  assert seen == [["B only"], ["B only", "rowA"]]
  with pytest.raises(plots.NoRunsError, match="no run of the rows"):
    plots.draw_all(experiment, out, labels={"rowZ": "Z"}, only_labelled=True)
