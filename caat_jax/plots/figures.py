"""The figures drawn from training logs, and the list of all figures.

Each ``draw_*`` takes the row groups (``runs.group_runs``) and returns
{file stem: matplotlib Figure}, or raises ``Skip`` naming the keys no run
holds. Lines are the mean over a row's seeds, shaded +-1 std; bars carry
std error bars. Bounds are logged in [0, 1] pixel units and drawn in 1/255.
"""

import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (the backend must be set first)

from caat_jax.plots import class_errors  # noqa: E402
from caat_jax.plots.runs import Group, has_key, mean_std, series  # noqa: E402
from caat_jax.plots.style import (  # noqa: E402
  BOUND_LABEL,
  PIXEL,
  RATIO_LABEL,
  STEP_LABEL,
  Skip,
  class_name,
  color,
  dataset_of,
  finish,
  line,
  missing,
  num_entries,
  seeds_note,
)

# -- training curves -----------------------------------------------------------

# (title, y label, scale, [(key, kind shown in the legend, line style)])
TRAINING_PANELS = (
  ("training loss", "loss (each method's own training objective)", 1.0, [("train/loss", "", "-")]),
  (
    "accuracy on the training batches",
    "accuracy (%)",
    100.0,
    [
      ("train/clean_acc", "clean", "-"),
      ("train/adv_acc", "adversarial", "--"),
      ("train/anti_acc", "anti-adversarial", ":"),
    ],
  ),
  (
    "meta loss (meta batch, at meta-update steps)",
    "meta loss",
    1.0,
    [("train/meta_loss", "", "-")],
  ),
  (
    "policy entropy (Reinforce strategy)",
    "entropy (nats)",
    1.0,
    [
      ("train/entropy", "joint (direction, bound)", "-"),
      ("train/entropy_direction", "direction", "--"),
      ("train/entropy_bound", "bound", ":"),
    ],
  ),
)


def draw_training_curves(groups: list[Group]) -> dict[str, Figure]:
  """Loss, clean / adversarial accuracy, meta loss, policy entropy, one line per row."""
  panels = [p for p in TRAINING_PANELS if any(has_key(groups, k) for k, _, _ in p[3])]
  if not panels:
    raise missing([k for p in TRAINING_PANELS for k, _, _ in p[3]])
  ncols = min(2, len(panels))
  nrows = -(-len(panels) // ncols)
  fig = Figure(figsize=(6.0 * ncols, 4.0 * nrows + 0.4))
  grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in grid[len(panels) :]:
    ax.set_axis_off()
  axes = grid[: len(panels)]
  for ax, (title, ylabel, scale, keys) in zip(axes, panels):
    for i, g in enumerate(groups):
      for key, kind, style in keys:
        s = series(g, key)
        if s is not None:
          label = f"{g.legend}: {kind}" if kind else g.legend
          line(ax, s, label, scale, color=color(i), linestyle=style)
    ax.set(title=title, xlabel=STEP_LABEL, ylabel=ylabel)
    ax.legend(fontsize=7)
  finish(fig, axes, "Training curves (means over each logging window)" + seeds_note(groups))
  return {"training_curves": fig}


# -- adversary ratio and bound per class (Figs. 9, 13) -------------------------

PER_CLASS_KEYS = (
  ("train/adv_ratio_per_class", "adversary ratio per class", RATIO_LABEL, 1.0),
  ("train/eps_per_class", "mean bound per class", BOUND_LABEL, PIXEL),
)


def draw_strategy_per_class(groups: list[Group]) -> dict[str, Figure]:
  """Per row: each class's adversary ratio and mean bound over training."""
  cols = [c for c in PER_CLASS_KEYS if has_key(groups, c[0])]
  rows = [g for g in groups if any(has_key([g], c[0]) for c in cols)]
  if not rows:
    raise missing([c[0] for c in PER_CLASS_KEYS])
  fig = Figure(figsize=(5.5 * len(cols), 3.4 * len(rows) + 0.6))
  axes = fig.subplots(len(rows), len(cols), squeeze=False)
  for r, g in enumerate(rows):
    dataset = dataset_of(g)
    for c, (key, title, ylabel, scale) in enumerate(cols):
      ax = axes[r][c]
      n = num_entries([g], key)
      if n == 0:
        ax.set_axis_off()
        ax.text(
          0.5,
          0.5,
          f"{g.label}: not logged ({key})",
          ha="center",
          color="grey",
          transform=ax.transAxes,
        )
        continue
      cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
      for k in range(n):
        s = series(g, key, k)
        if s is not None:
          line(ax, s, class_name(dataset, k), scale, color=cmap(k if n <= 10 else k / (n - 1)))
      ax.set(title=f"{g.legend}: {title}", xlabel=STEP_LABEL, ylabel=ylabel)
      if n <= 10:
        ax.legend(fontsize=6, ncol=2, title="class", title_fontsize=7)
  finish(fig, axes.ravel(), "Strategy per class over training (Figs. 9, 13)" + seeds_note(rows))
  return {"strategy_per_class": fig}


# -- clean vs corrupted training labels (Fig. 10) ------------------------------

_CLEAN, _NOISY = ("clean labels", "tab:blue"), ("corrupted labels", "tab:red")
# (key, title, y label, scale, [(entry, legend, colour, style)]); the entries
# follow the logging order: clean (0) then corrupted (1); by direction
# 2 * corrupted + direction (0 adversaries, 1 anti-adversaries).
NOISE_PANELS = (
  (
    "train/adv_ratio_clean_noisy",
    "adversary ratio",
    RATIO_LABEL,
    1.0,
    [(0, *_CLEAN, "-"), (1, *_NOISY, "-")],
  ),
  (
    "train/eps_clean_noisy",
    "mean bound",
    BOUND_LABEL,
    PIXEL,
    [(0, *_CLEAN, "-"), (1, *_NOISY, "-")],
  ),
  (
    "train/p_adv_clean_noisy",
    "policy p(adversary)",
    "mean p(adversary)",
    1.0,
    [(0, *_CLEAN, "-"), (1, *_NOISY, "-")],
  ),
  (
    "train/eps_direction_clean_noisy",
    "mean bound by direction",
    BOUND_LABEL,
    PIXEL,
    [
      (0, "clean, adversaries", "tab:blue", "-"),
      (1, "clean, anti-adversaries", "tab:blue", "--"),
      (2, "corrupted, adversaries", "tab:red", "-"),
      (3, "corrupted, anti-adversaries", "tab:red", "--"),
    ],
  ),
)


def _has_corrupted(g: Group) -> bool:
  for key, _, _, _, entries in NOISE_PANELS:
    for e, legend, _, _ in entries:
      s = series(g, key, e) if legend.startswith("corrupted") else None
      if s is not None and np.any(np.isfinite(s[1])):
        return True
  return False


def draw_clean_vs_corrupted(groups: list[Group]) -> dict[str, Figure]:
  """Per row: adversary ratio, bound (and the policy's p(adversary), bound by
  direction where logged) of samples with clean vs corrupted training labels."""
  keys = [p[0] for p in NOISE_PANELS]
  if not any(has_key(groups, k) for k in keys):
    raise missing(keys)
  rows = [g for g in groups if _has_corrupted(g)]
  if not rows:
    raise Skip(
      f"no corrupted training labels in any run ({keys[0]} and the others log "
      "null for the corrupted entries: no label noise)"
    )
  cols = [p for p in NOISE_PANELS if has_key(rows, p[0])]
  fig = Figure(figsize=(4.6 * len(cols), 3.4 * len(rows) + 0.6))
  axes = fig.subplots(len(rows), len(cols), squeeze=False)
  for r, g in enumerate(rows):
    for c, (key, title, ylabel, scale, entries) in enumerate(cols):
      ax = axes[r][c]
      if not has_key([g], key):
        ax.set_axis_off()
        ax.text(
          0.5,
          0.5,
          f"{g.label}: not logged ({key})",
          ha="center",
          color="grey",
          transform=ax.transAxes,
        )
        continue
      for e, legend, entry_color, style in entries:
        s = series(g, key, e)
        if s is not None:
          line(ax, s, legend, scale, color=entry_color, linestyle=style)
      ax.set(title=f"{g.legend}: {title}", xlabel=STEP_LABEL, ylabel=ylabel)
      ax.legend(fontsize=7)
  finish(
    fig,
    axes.ravel(),
    "Samples with clean vs corrupted training labels (Fig. 10)" + seeds_note(rows),
  )
  return {"clean_vs_corrupted": fig}


# -- margin by bound (Fig. 8c) -------------------------------------------------

MARGIN_KEY, BOUND_BIN_KEY = "train/margin_by_bound", "train/bound_by_bound_bin"


def _late_mean(run, key: str) -> np.ndarray:
  """Per bin, the mean of ``key`` over the run's second half of training
  (the records after half its last step), NaN for bins never filled."""
  recs = [r for r in run.records if isinstance(r.get(key), list)]
  last = max(int(r["step"]) for r in recs)
  late = [r for r in recs if int(r["step"]) > last / 2] or recs[-1:]  # last = 0: one record
  rows = np.array([[np.nan if v is None else float(v) for v in r[key]] for r in late])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # bins empty in every record
    return np.nanmean(rows, axis=0)


def draw_bound_vs_margin(groups: list[Group]) -> dict[str, Figure]:
  """Per row: the training samples binned by their perturbation bound, each
  bin's mean clean probability margin (p_y - max_j p_j) over the second half
  of training, at the bin's mean bound; error bars +-1 std over seeds."""
  rows = [g for g in groups if has_key([g], MARGIN_KEY) and has_key([g], BOUND_BIN_KEY)]
  if not rows:
    raise missing([MARGIN_KEY, BOUND_BIN_KEY])
  fig = Figure(figsize=(7.5, 4.4))
  ax = fig.subplots()
  for i, g in enumerate(rows):
    runs = [r for r in g.runs if any(MARGIN_KEY in rec for rec in r.records)]
    bound, _ = mean_std([_late_mean(r, BOUND_BIN_KEY) for r in runs])
    margin, std = mean_std([_late_mean(r, MARGIN_KEY) for r in runs])
    ok = np.isfinite(bound) & np.isfinite(margin)
    ax.errorbar(
      bound[ok] * PIXEL,
      margin[ok],
      yerr=std[ok] if len(runs) > 1 else None,
      marker="o",
      ms=4,
      capsize=2,
      color=color(i),
      label=g.legend,
    )
  ax.set(
    xlabel="perturbation bound $\\epsilon_i$ (units of 1/255; bin mean)",
    ylabel="mean clean margin $p_y - \\max_{j \\neq y} p_j$",
  )
  ax.legend(fontsize=7)
  finish(
    fig,
    [ax],
    "Mean clean margin of the training samples by their bound (Fig. 8c)\n"
    "second half of training" + seeds_note(rows, "error bars"),
  )
  return {"bound_vs_margin": fig}


FIGURES = (
  ("per-class natural and robust errors (Figs. 11-12)", class_errors.draw_per_class_errors),
  ("training curves", draw_training_curves),
  ("adversary ratio and bound per class (Figs. 9, 13)", draw_strategy_per_class),
  ("clean vs corrupted samples (Fig. 10)", draw_clean_vs_corrupted),
  ("margin by bound (Fig. 8c)", draw_bound_vs_margin),
)
