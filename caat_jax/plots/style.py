"""What every figure shares: colours, the mean-and-band line, titles with
the seed count, and ``Skip`` for a figure whose data no run holds. Bounds are
logged in [0, 1] pixel units and drawn in 1/255 (``PIXEL``)."""

import numpy as np

from caat_jax.plots.runs import Group

PIXEL = 255.0
CLASS_NAMES = {
  "cifar10": (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  )
}
STEP_LABEL = "training step"
BOUND_LABEL = "mean bound $\\epsilon_i$ (units of 1/255)"
RATIO_LABEL = "adversary ratio (mean $\\alpha_i$; 1 = all adversaries)"


class Skip(Exception):
  """A figure whose data no run holds (the message says which keys)."""


def color(i: int) -> str:
  return f"C{i % 10}"


def line(ax, s, label, scale=1.0, **kw):
  """The mean as a line, +-1 std (over seeds) as a band around it."""
  steps, mean, std = s
  (drawn,) = ax.plot(steps, mean * scale, label=label, **kw)
  if np.any(std > 0):
    ax.fill_between(
      steps, (mean - std) * scale, (mean + std) * scale, color=drawn.get_color(), alpha=0.15, lw=0
    )
  return drawn


def num_entries(groups: list[Group], key: str) -> int:
  return max(
    (
      len(rec[key])
      for g in groups
      for r in g.runs
      for rec in r.records
      if isinstance(rec.get(key), list)
    ),
    default=0,
  )


def seeds_note(groups: list[Group], what: str = "shaded band") -> str:
  return f"; mean over seeds, {what} +-1 std" if any(len(g.runs) > 1 for g in groups) else ""


def finish(fig, ax_list, title):
  for ax in ax_list:
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()


def missing(keys) -> Skip:
  return Skip("no run logs " + ", ".join(keys))


def dataset_of(g: Group) -> str:
  """The dataset a row's evaluation documents name ('' if none)."""
  return next((d.get("dataset", "") for r in g.runs for d in r.eval_docs), "")


def class_name(dataset: str, k: int) -> str:
  """Class ``k``'s name where the dataset has names, else its index."""
  names = CLASS_NAMES.get(dataset, ())
  return names[k] if k < len(names) else str(k)
