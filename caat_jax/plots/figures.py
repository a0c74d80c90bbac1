"""The figures. Each ``draw_*`` takes the row groups (``runs.group_runs``) and
returns {file stem: matplotlib Figure}, or raises ``Skip`` naming the keys no
run holds. Lines are the mean over a row's seeds, shaded +-1 std; bars carry
std error bars. Bounds are logged in [0, 1] pixel units and drawn in 1/255.
"""

import re
import warnings

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (the backend must be set first)
import numpy as np  # noqa: E402

from caat_jax.plots.runs import Group, has_key, mean_std, series  # noqa: E402

PIXEL = 255.0
_CLASS_NAMES = {"cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck")}
STEP_LABEL = "training step"
BOUND_LABEL = "mean bound $\\epsilon_i$ (units of 1/255)"
RATIO_LABEL = "adversary ratio (mean $\\alpha_i$; 1 = all adversaries)"


class Skip(Exception):
  """A figure whose data no run holds (the message says which keys)."""


def _color(i: int) -> str:
  return f"C{i % 10}"


def _line(ax, s, label, scale=1.0, **kw):
  """The mean as a line, +-1 std (over seeds) as a band around it."""
  steps, mean, std = s
  (line,) = ax.plot(steps, mean * scale, label=label, **kw)
  if np.any(std > 0):
    ax.fill_between(steps, (mean - std) * scale, (mean + std) * scale,
                    color=line.get_color(), alpha=0.15, lw=0)
  return line


def _num_entries(groups: list[Group], key: str) -> int:
  return max((len(rec[key]) for g in groups for r in g.runs for rec in r.records
              if isinstance(rec.get(key), list)), default=0)


def _seeds_note(groups: list[Group], what: str = "shaded band") -> str:
  return (f"; mean over seeds, {what} +-1 std" if any(len(g.runs) > 1 for g in groups)
          else "")


def _finish(fig, ax_list, title):
  for ax in ax_list:
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()


def _missing(keys) -> Skip:
  return Skip("no run logs " + ", ".join(keys))


# -- training curves -----------------------------------------------------------

# (title, y label, scale, [(key, kind shown in the legend, line style)])
TRAINING_PANELS = (
    ("training loss", "loss (each method's own training objective)", 1.0,
     [("train/loss", "", "-")]),
    ("accuracy on the training batches", "accuracy (%)", 100.0,
     [("train/clean_acc", "clean", "-"), ("train/adv_acc", "adversarial", "--"),
      ("train/anti_acc", "anti-adversarial", ":")]),
    ("meta loss (meta batch, at meta-update steps)", "meta loss", 1.0,
     [("train/meta_loss", "", "-")]),
    ("policy entropy (Reinforce strategy)", "entropy (nats)", 1.0,
     [("train/entropy", "joint (direction, bound)", "-"),
      ("train/entropy_direction", "direction", "--"), ("train/entropy_bound", "bound", ":")]),
)


def draw_training_curves(groups: list[Group]) -> dict[str, Figure]:
  """Loss, clean / adversarial accuracy, meta loss, policy entropy, one line per row."""
  panels = [p for p in TRAINING_PANELS if any(has_key(groups, k) for k, _, _ in p[3])]
  if not panels:
    raise _missing([k for p in TRAINING_PANELS for k, _, _ in p[3]])
  ncols = min(2, len(panels))
  nrows = -(-len(panels) // ncols)
  fig = Figure(figsize=(6.0 * ncols, 4.0 * nrows + 0.4))
  grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in grid[len(panels):]:
    ax.set_axis_off()
  axes = grid[:len(panels)]
  for ax, (title, ylabel, scale, keys) in zip(axes, panels):
    for i, g in enumerate(groups):
      for key, kind, style in keys:
        s = series(g, key)
        if s is not None:
          label = f"{g.legend}: {kind}" if kind else g.legend
          _line(ax, s, label, scale, color=_color(i), linestyle=style)
    ax.set(title=title, xlabel=STEP_LABEL, ylabel=ylabel)
    ax.legend(fontsize=7)
  _finish(fig, axes, "Training curves (means over each logging window)" + _seeds_note(groups))
  return {"training_curves": fig}


# -- adversary ratio and bound per class (Figs. 9, 13) -------------------------

PER_CLASS_KEYS = (("train/adv_ratio_per_class", "adversary ratio per class", RATIO_LABEL, 1.0),
                  ("train/eps_per_class", "mean bound per class", BOUND_LABEL, PIXEL))


def draw_strategy_per_class(groups: list[Group]) -> dict[str, Figure]:
  """Per row: each class's adversary ratio and mean bound over training."""
  cols = [c for c in PER_CLASS_KEYS if has_key(groups, c[0])]
  rows = [g for g in groups if any(has_key([g], c[0]) for c in cols)]
  if not rows:
    raise _missing([c[0] for c in PER_CLASS_KEYS])
  fig = Figure(figsize=(5.5 * len(cols), 3.4 * len(rows) + 0.6))
  axes = fig.subplots(len(rows), len(cols), squeeze=False)
  for r, g in enumerate(rows):
    dataset = _dataset(g)
    for c, (key, title, ylabel, scale) in enumerate(cols):
      ax = axes[r][c]
      n = _num_entries([g], key)
      if n == 0:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{g.label}: not logged ({key})", ha="center", color="grey",
                transform=ax.transAxes)
        continue
      cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
      for k in range(n):
        s = series(g, key, k)
        if s is not None:
          _line(ax, s, _class_name(dataset, k), scale, color=cmap(k if n <= 10 else k / (n - 1)))
      ax.set(title=f"{g.legend}: {title}", xlabel=STEP_LABEL, ylabel=ylabel)
      if n <= 10:
        ax.legend(fontsize=6, ncol=2, title="class", title_fontsize=7)
  _finish(fig, axes.ravel(), "Strategy per class over training (Figs. 9, 13)" + _seeds_note(rows))
  return {"strategy_per_class": fig}


# -- clean vs corrupted training labels (Fig. 10) ------------------------------

_CLEAN, _NOISY = ("clean labels", "tab:blue"), ("corrupted labels", "tab:red")
# (key, title, y label, scale, [(entry, legend, colour, style)]); the entries
# follow the logging order: clean (0) then corrupted (1); by direction
# 2 * corrupted + direction (0 adversaries, 1 anti-adversaries).
NOISE_PANELS = (
    ("train/adv_ratio_clean_noisy", "adversary ratio", RATIO_LABEL, 1.0,
     [(0, *_CLEAN, "-"), (1, *_NOISY, "-")]),
    ("train/eps_clean_noisy", "mean bound", BOUND_LABEL, PIXEL,
     [(0, *_CLEAN, "-"), (1, *_NOISY, "-")]),
    ("train/p_adv_clean_noisy", "policy p(adversary)", "mean p(adversary)", 1.0,
     [(0, *_CLEAN, "-"), (1, *_NOISY, "-")]),
    ("train/eps_direction_clean_noisy", "mean bound by direction", BOUND_LABEL, PIXEL,
     [(0, "clean, adversaries", "tab:blue", "-"),
      (1, "clean, anti-adversaries", "tab:blue", "--"),
      (2, "corrupted, adversaries", "tab:red", "-"),
      (3, "corrupted, anti-adversaries", "tab:red", "--")]),
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
    raise _missing(keys)
  rows = [g for g in groups if _has_corrupted(g)]
  if not rows:
    raise Skip(f"no corrupted training labels in any run ({keys[0]} and the others log "
               "null for the corrupted entries: no label noise)")
  cols = [p for p in NOISE_PANELS if has_key(rows, p[0])]
  fig = Figure(figsize=(4.6 * len(cols), 3.4 * len(rows) + 0.6))
  axes = fig.subplots(len(rows), len(cols), squeeze=False)
  for r, g in enumerate(rows):
    for c, (key, title, ylabel, scale, entries) in enumerate(cols):
      ax = axes[r][c]
      if not has_key([g], key):
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{g.label}: not logged ({key})", ha="center", color="grey",
                transform=ax.transAxes)
        continue
      for e, legend, color, style in entries:
        s = series(g, key, e)
        if s is not None:
          _line(ax, s, legend, scale, color=color, linestyle=style)
      ax.set(title=f"{g.legend}: {title}", xlabel=STEP_LABEL, ylabel=ylabel)
      ax.legend(fontsize=7)
  _finish(fig, axes.ravel(), "Samples with clean vs corrupted training labels (Fig. 10)"
          + _seeds_note(rows))
  return {"clean_vs_corrupted": fig}


# -- per-class natural and robust errors (Figs. 11-12) -------------------------

def _dataset(g: Group) -> str:
  return next((d.get("dataset", "") for r in g.runs for d in r.eval_docs), "")


def _class_name(dataset: str, k: int) -> str:
  names = _CLASS_NAMES.get(dataset, ())
  return names[k] if k < len(names) else str(k)


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _doc_key(d: dict) -> tuple[str, str, float | None]:
  return str(d.get("dataset", "")), str(d["attack"]), d.get("eps")


def eval_keys(groups: list[Group]) -> list[tuple[str, str, float | None]]:
  """The (dataset, attack, eps) of every evaluation document, in first-seen order."""
  out = {}
  for g in groups:
    for r in g.runs:
      for d in r.eval_docs:
        out.setdefault(_doc_key(d), None)
  return list(out)


def draw_per_class_errors(groups: list[Group]) -> dict[str, Figure]:
  """Per (dataset, attack, eps): natural and robust error of each class, one
  bar per row side by side (mean over seeds, std error bars)."""
  keys = eval_keys(groups)
  if not keys:
    raise Skip("no run has an evaluation document (eval.json or eval_<attack>.json "
               "with per_class natural and robust errors)")
  figs = {}
  for dataset, attack, eps in keys:
    stem = f"per_class_errors_{dataset}_{attack}" if dataset else f"per_class_errors_{attack}"
    if sum(k[:2] == (dataset, attack) for k in keys) > 1:
      stem += f"_eps{eps * PIXEL:g}" if eps is not None else "_eps-unknown"
    figs[_slug(stem)] = _per_class_figure(groups, dataset, attack, eps)
  return figs


def _per_class_figure(groups, dataset, attack, eps) -> Figure:
  sel = []  # (group index, group, its documents for this key)
  for i, g in enumerate(groups):
    docs = [d for r in g.runs for d in r.eval_docs if _doc_key(d) == (dataset, attack, eps)]
    if docs:
      sel.append((i, g, docs))
  eps_text = f"$\\epsilon$ = {eps * PIXEL:.3g}/255" if eps is not None else "eps unknown"
  num_classes = max(len(d["per_class"][k]) for _, _, docs in sel for d in docs
                    for k in ("natural", "robust"))
  fig = Figure(figsize=(min(24.0, max(9.0, (0.5 + 0.25 * len(sel)) * num_classes)), 7.2))
  axes = fig.subplots(2, 1, squeeze=False)[:, 0]
  width = 0.8 / len(sel)
  for ax, kind, title in zip(axes, ("natural", "robust"),
                             ("natural error (clean test points)",
                              f"robust error ({attack}, {eps_text})")):
    top = 100.0
    for j, (i, g, docs) in enumerate(sel):
      mean, std = mean_std([d["per_class"][kind] for d in docs])
      top = max(top, float(np.nanmax(mean + std)))
      x = np.arange(len(mean)) + (j - (len(sel) - 1) / 2) * width
      label = f"{g.legend}, class mean {np.nanmean(mean):.1f}%, worst {np.nanmax(mean):.1f}%"
      ax.bar(x, mean, width, yerr=std if len(docs) > 1 else None, capsize=2, label=label,
             color=_color(i), error_kw={"elinewidth": 0.8})
    ax.set(title=title, ylabel="error (% of the class's test points)", ylim=(0, top + 5))
    ax.set_xticks(np.arange(num_classes),
                  [_class_name(dataset, k) for k in range(num_classes)], fontsize=8)
    ax.set_xlabel("class")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  points = sorted({d.get("num_examples") for _, _, docs in sel for d in docs} - {None})
  where = f"{dataset}, " if dataset else ""
  npts = f", {'/'.join(map(str, points))} test points" if points else ""
  _finish(fig, axes, f"Per-class errors ({where}{attack}{npts}; Figs. 11-12)"
          + _seeds_note([g for _, g, _ in sel], "error bars"))
  return fig


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
    raise _missing([MARGIN_KEY, BOUND_BIN_KEY])
  fig = Figure(figsize=(7.5, 4.4))
  ax = fig.subplots()
  for i, g in enumerate(rows):
    runs = [r for r in g.runs if any(MARGIN_KEY in rec for rec in r.records)]
    bound, _ = mean_std([_late_mean(r, BOUND_BIN_KEY) for r in runs])
    margin, std = mean_std([_late_mean(r, MARGIN_KEY) for r in runs])
    ok = np.isfinite(bound) & np.isfinite(margin)
    ax.errorbar(bound[ok] * PIXEL, margin[ok], yerr=std[ok] if len(runs) > 1 else None,
                marker="o", ms=4, capsize=2, color=_color(i), label=g.legend)
  ax.set(xlabel="perturbation bound $\\epsilon_i$ (units of 1/255; bin mean)",
         ylabel="mean clean margin $p_y - \\max_{j \\neq y} p_j$")
  ax.legend(fontsize=7)
  _finish(fig, [ax], "Mean clean margin of the training samples by their bound (Fig. 8c)\n"
          "second half of training" + _seeds_note(rows, "error bars"))
  return {"bound_vs_margin": fig}


FIGURES = (
    ("per-class natural and robust errors (Figs. 11-12)", draw_per_class_errors),
    ("training curves", draw_training_curves),
    ("adversary ratio and bound per class (Figs. 9, 13)", draw_strategy_per_class),
    ("clean vs corrupted samples (Fig. 10)", draw_clean_vs_corrupted),
    ("margin by bound (Fig. 8c)", draw_bound_vs_margin),
)
