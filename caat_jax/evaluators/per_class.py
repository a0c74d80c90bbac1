"""Per-class errors and the result documents of docs/method.md §9 (Eqs. 45-48).

For each class c: natural error, robust error under an attack (a test point
counts as robust only if it is classified correctly both clean and under the
attack, so robust >= natural), and boundary error = robust - natural. Each is
reported as the class average and the worst class.
"""

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np


def per_class_error(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Error rate (%) per class: 100 * (1 - mean correct) over that class's points.

  correct: bool [N]; labels: int [N] -> float [num_classes] (nan for a class
  with no points).
  """
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  right = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return 100.0 * (1.0 - right / counts)


def report(
  outcomes: Mapping[str, np.ndarray],
  num_classes: int,
  *,
  attack: str,
  eps: float,
  method: str = "",
  dataset: str = "",
  model: str = "",
) -> dict:
  """docs/method.md §9's result document for one attack (Eqs. 45-48).

  avg = mean over classes of the per-class error (classes weigh equally, even
  with unequal class sizes); worst = max over classes.
  """
  labels = outcomes["label"]
  nat = per_class_error(outcomes["natural"], labels, num_classes)
  rob = per_class_error(outcomes[attack], labels, num_classes)
  bnd = rob - nat
  per_class = {"natural": nat, "boundary": bnd, "robust": rob}
  return {
    "method": method,
    "dataset": dataset,
    "model": model,
    "attack": attack,
    "eps": float(eps),
    "num_examples": int(labels.shape[0]),
    "avg": {k: float(np.nanmean(v)) for k, v in per_class.items()},
    "worst": {k: float(np.nanmax(v)) for k, v in per_class.items()},
    "per_class": {k: [round(float(e), 4) for e in v] for k, v in per_class.items()},
  }


def format_table(docs: Sequence[dict], label_key: str = "attack") -> str:
  """A plain-text table: one row per document, avg and worst of each error."""
  head = (
    f"{label_key:<14} {'nat avg':>8} {'nat wst':>8} {'bnd avg':>8} "
    f"{'bnd wst':>8} {'rob avg':>8} {'rob wst':>8}"
  )
  lines = [head, "-" * len(head)]
  for d in docs:
    a, w = d["avg"], d["worst"]
    lines.append(
      f"{str(d[label_key]):<14} {a['natural']:8.2f} {w['natural']:8.2f} "
      f"{a['boundary']:8.2f} {w['boundary']:8.2f} {a['robust']:8.2f} {w['robust']:8.2f}"
    )
  return "\n".join(lines)


def format_per_class(doc: dict) -> str:
  """Per-class natural / boundary / robust errors (%) of one document."""
  pc = doc["per_class"]
  lines = [
    f"per class ({doc['attack']}, eps={doc['eps']:.4f}):",
    f"{'class':>5} {'natural':>8} {'boundary':>9} {'robust':>8}",
  ]
  for c, (n, b, r) in enumerate(zip(pc["natural"], pc["boundary"], pc["robust"])):
    lines.append(f"{c:>5} {n:8.2f} {b:9.2f} {r:8.2f}")
  return "\n".join(lines)


def write_json(path: str, obj) -> None:
  """Writes atomically (temp file + rename): a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
