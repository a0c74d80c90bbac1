"""Per-class natural and robust errors, one bar per row (Figs. 11-12), from
each run's evaluation documents (``per_class`` lists)."""

import re

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (the backend must be set first)

from caat_jax.plots.runs import Group, mean_std  # noqa: E402
from caat_jax.plots.style import PIXEL, Skip, class_name, color, finish, seeds_note  # noqa: E402


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
    raise Skip(
      "no run has an evaluation document (eval.json or eval_<attack>.json "
      "with per_class natural and robust errors)"
    )
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
  num_classes = max(
    len(d["per_class"][k]) for _, _, docs in sel for d in docs for k in ("natural", "robust")
  )
  fig = Figure(figsize=(min(24.0, max(9.0, (0.5 + 0.25 * len(sel)) * num_classes)), 7.2))
  axes = fig.subplots(2, 1, squeeze=False)[:, 0]
  width = 0.8 / len(sel)
  for ax, kind, title in zip(
    axes,
    ("natural", "robust"),
    ("natural error (clean test points)", f"robust error ({attack}, {eps_text})"),
  ):
    top = 100.0
    for j, (i, g, docs) in enumerate(sel):
      mean, std = mean_std([d["per_class"][kind] for d in docs])
      top = max(top, float(np.nanmax(mean + std)))
      x = np.arange(len(mean)) + (j - (len(sel) - 1) / 2) * width
      label = f"{g.legend}, class mean {np.nanmean(mean):.1f}%, worst {np.nanmax(mean):.1f}%"
      ax.bar(
        x,
        mean,
        width,
        yerr=std if len(docs) > 1 else None,
        capsize=2,
        label=label,
        color=color(i),
        error_kw={"elinewidth": 0.8},
      )
    ax.set(title=title, ylabel="error (% of the class's test points)", ylim=(0, top + 5))
    ax.set_xticks(
      np.arange(num_classes), [class_name(dataset, k) for k in range(num_classes)], fontsize=8
    )
    ax.set_xlabel("class")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  points = sorted({d.get("num_examples") for _, _, docs in sel for d in docs} - {None})
  where = f"{dataset}, " if dataset else ""
  npts = f", {'/'.join(map(str, points))} test points" if points else ""
  finish(
    fig,
    axes,
    f"Per-class errors ({where}{attack}{npts}; Figs. 11-12)"
    + seeds_note([g for _, g, _ in sel], "error bars"),
  )
  return fig
