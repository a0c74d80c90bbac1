"""Figures of a run, or of many runs side by side (matplotlib, PNG and SVG):

  python -m caat_jax.plots --workdir=DIR [--out=DIR/figures]

DIR is one run, or any directory holding runs at any depth (an experiment's
DIR/<row>/seed<k>/, a suite's DIR/<method>/). Reads each run's
``metrics.jsonl`` and evaluation documents (``eval.json``,
``eval_<attack>.json``); the seeds of a row are averaged (std as bands / bars).

* ``per_class_errors_<dataset>_<attack>``: natural and robust error per class,
  one bar per row (Figs. 11-12); the documents' ``per_class`` lists.
* ``training_curves``: ``train/loss``, ``train/clean_acc`` / ``adv_acc`` /
  ``anti_acc``, ``train/meta_loss``, ``train/entropy`` (and ``_direction``,
  ``_bound``).
* ``strategy_per_class``: ``train/adv_ratio_per_class`` and
  ``train/eps_per_class`` over training (Figs. 9, 13).
* ``clean_vs_corrupted``: ``train/adv_ratio_clean_noisy``,
  ``train/eps_clean_noisy``, ``train/p_adv_clean_noisy``,
  ``train/eps_direction_clean_noisy`` (Fig. 10; runs with label noise).

* ``bound_vs_margin``: ``train/margin_by_bound`` at ``train/bound_by_bound_bin``
  (the training samples binned by their bound, each bin's mean clean margin;
  Fig. 8c; Meta-CAAT and Reinforce-CAAT runs).

A figure no run has data for is skipped with one printed line.
"""

import os

from caat_jax.plots.class_errors import draw_per_class_errors
from caat_jax.plots.figures import (
  FIGURES,
  draw_bound_vs_margin,
  draw_clean_vs_corrupted,
  draw_strategy_per_class,
  draw_training_curves,
)
from caat_jax.plots.runs import Group, NoRunsError, RunRecord, discover_runs, group_runs
from caat_jax.plots.style import Skip

__all__ = [
  "draw_all",
  "discover_runs",
  "group_runs",
  "RunRecord",
  "Group",
  "NoRunsError",
  "Skip",
  "draw_per_class_errors",
  "draw_training_curves",
  "draw_strategy_per_class",
  "draw_clean_vs_corrupted",
  "draw_bound_vs_margin",
  "FIGURES",
]


def draw_all(
  workdir: str,
  out: str | None = None,
  labels: dict[str, str] | None = None,
  *,
  only_labelled: bool = False,
  formats: tuple[str, ...] = ("png", "svg"),
) -> list[str]:
  """Draws every figure of the runs under ``workdir`` into ``out``.

  Args:
    workdir: one run directory, or a directory holding runs at any depth.
    out: where the files go (default ``workdir/figures``; created).
    labels: row directory (relative to ``workdir``, or its last component) ->
      the label shown in legends; the rows it names come first, in its order.
    only_labelled: draw the rows ``labels`` names only (an experiment's rows,
      when its workdir also holds other experiments' runs).
    formats: file types written per figure.
  Returns:
    The paths written, one per figure and format.
  Raises:
    NoRunsError: ``workdir`` does not exist or holds no run.
  """
  groups = group_runs(discover_runs(workdir), labels)
  if only_labelled:
    names = set(labels or {})
    groups = [g for g in groups if g.row in names or g.row.split("/")[-1] in names]
    if not groups:
      raise NoRunsError(f"no run of the rows {sorted(names)} under {workdir}")
  out = out or os.path.join(workdir, "figures")
  os.makedirs(out, exist_ok=True)
  paths = []
  for name, draw in FIGURES:
    try:
      figs = draw(groups)
    except Skip as e:
      print(f"skipped {name}: {e}")
      continue
    for stem, fig in figs.items():
      for ext in formats:
        path = os.path.join(out, f"{stem}.{ext}")
        fig.savefig(path, dpi=110)
        paths.append(path)
  return paths
