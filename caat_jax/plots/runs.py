"""Finding runs under a directory, reading their files, averaging over seeds.

A run is a directory holding ``metrics.jsonl`` and/or ``eval.json`` /
``eval_<attack>.json``. Runs are grouped into rows: the path relative to the
searched directory, less a trailing ``seed<k>`` component (an experiment's
``DIR/<row>/seed<k>/``, a suite's ``DIR/<method>/``, or one run).
"""

import dataclasses
import glob
import json
import os
import re
import sys
import warnings
from collections.abc import Callable

import numpy as np

SEED_DIR = re.compile(r"seed[_-]?(\d+)")
# Never runs, and possibly large: not searched.
_SKIP_DIRS = {"checkpoints", "tb", "__pycache__"}


class NoRunsError(FileNotFoundError):
  """The directory does not exist, or holds no run."""


@dataclasses.dataclass
class RunRecord:
  """One run directory's records (``metrics.jsonl``) and evaluation documents."""

  path: str
  row: str  # the row directory, relative to the searched directory
  seed: int | None
  records: list[dict]
  eval_docs: list[dict]


@dataclasses.dataclass
class Group:
  """The runs of one row (its seeds), drawn as one series."""

  row: str
  label: str
  runs: list[RunRecord]

  @property
  def legend(self) -> str:
    n = len(self.runs)
    return f"{self.label} ({n} seeds)" if n > 1 else self.label


def read_records(path: str, bad_lines: list[int] | None = None) -> list[dict]:
  """The JSON objects of a ``metrics.jsonl``; a cut-short or non-object line is
  skipped, and its (1-based) number appended to ``bad_lines`` if given."""
  out = []
  with open(path, errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        rec = None
      if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
        out.append(rec)
      elif bad_lines is not None:
        bad_lines.append(number)
  return out


def _is_doc(d) -> bool:
  pc = d.get("per_class") if isinstance(d, dict) else None
  return (
    isinstance(pc, dict)
    and "attack" in d
    and all(isinstance(pc.get(k), list) for k in ("natural", "robust"))
  )


def read_eval_docs(run_dir: str, unreadable: list[str] | None = None) -> list[dict]:
  """Evaluation documents: ``eval.json``'s list and each ``eval_<attack>.json``.

  Where both hold the same attack and eps, ``eval_<attack>.json`` is kept (it
  is written by ``caat_jax.evaluate`` after training, often on more points).
  Other JSON files (``eval_sanity.json``) are ignored; an unreadable one is
  skipped, and "<path>: <why>" appended to ``unreadable`` if given.
  """
  docs = {}
  paths = [os.path.join(run_dir, "eval.json")]
  paths += sorted(glob.glob(os.path.join(run_dir, "eval_*.json")))
  for p in paths:
    if not os.path.isfile(p):
      continue
    try:
      with open(p) as f:
        content = json.load(f)
    except (OSError, ValueError) as e:
      if unreadable is not None:
        why = " ".join(str(e).split())
        unreadable.append(f"{p}: {type(e).__name__}: {why}")
      continue
    found = [d for d in (content if isinstance(content, list) else [content]) if _is_doc(d)]
    for d in found:
      docs[(d["attack"], d.get("eps"))] = d
    if not found and unreadable is not None and os.path.basename(p) != "eval_sanity.json":
      unreadable.append(f"{p}: holds no evaluation document")
  return list(docs.values())


def _row_and_seed(root: str, path: str) -> tuple[str, int | None]:
  rel = os.path.relpath(path, root)
  parts = [] if rel == "." else rel.split(os.sep)
  if not parts:  # the searched directory is the run: name it by itself
    parts = [os.path.basename(os.path.abspath(root))]
    if SEED_DIR.fullmatch(parts[0]):
      parts.insert(0, os.path.basename(os.path.dirname(os.path.abspath(root))))
  seed = None
  m = SEED_DIR.fullmatch(parts[-1])
  if m and len(parts) > 1:
    seed, parts = int(m.group(1)), parts[:-1]
  elif m:  # DIR/seed<k> with no row directory: one row named after DIR
    seed, parts = int(m.group(1)), [os.path.basename(os.path.abspath(root))]
  return "/".join(parts), seed


def _warn(message: str) -> None:
  print(f"plots: {message}", file=sys.stderr, flush=True)


def discover_runs(root: str, warn: Callable[[str], None] = _warn) -> list[RunRecord]:
  """Every run at any depth under ``root`` (``root`` itself included).

  What cannot be read is skipped and said, one ``warn`` line (default: to
  stderr) per file: the count and numbers of the unreadable lines of a
  ``metrics.jsonl``, each unreadable evaluation file and why.

  Raises:
    NoRunsError: ``root`` is not a directory, or holds no run.
  """
  if not os.path.isdir(root):
    raise NoRunsError(f"{root}: no such directory")
  runs = []
  for d, subdirs, files in os.walk(root):
    subdirs[:] = sorted(s for s in subdirs if s not in _SKIP_DIRS)
    has_eval = "eval.json" in files or any(
      f.startswith("eval_") and f.endswith(".json") for f in files
    )
    if "metrics.jsonl" not in files and not has_eval:
      continue
    bad_lines, unreadable = [], []
    metrics_path = os.path.join(d, "metrics.jsonl")
    records = read_records(metrics_path, bad_lines) if "metrics.jsonl" in files else []
    docs = read_eval_docs(d, unreadable) if has_eval else []
    if bad_lines:
      shown = ", ".join(map(str, bad_lines[:10])) + (", ..." if len(bad_lines) > 10 else "")
      warn(
        f"{metrics_path}: skipped {len(bad_lines)} unreadable line(s) of "
        f"{len(bad_lines) + len(records)} (line(s) {shown})"
      )
    for message in unreadable:
      warn(f"skipped {message}")
    if not records and not docs:
      if bad_lines or unreadable:
        warn(f"{d}: nothing readable left; the run is left out")
      continue
    row, seed = _row_and_seed(root, d)
    runs.append(RunRecord(path=d, row=row, seed=seed, records=records, eval_docs=docs))
  if not runs:
    raise NoRunsError(f"{root}: no run found (no metrics.jsonl or eval.json at any depth)")
  return runs


def group_runs(runs: list[RunRecord], labels: dict[str, str] | None = None) -> list[Group]:
  """Runs grouped by row; ``labels`` maps a row (or its last directory name)
  to a display label and orders the rows it names first, in its order."""
  labels = labels or {}
  rows: dict[str, list[RunRecord]] = {}
  for r in runs:
    rows.setdefault(r.row, []).append(r)
  order = {}
  for k in labels:
    for r in sorted(rows):
      if r not in order and (r == k or r.split("/")[-1] == k):
        order[r] = len(order)
  ordered = sorted(rows, key=lambda r: (order.get(r, len(order)), r))
  out = []
  for r in ordered:
    label = labels.get(r, labels.get(r.split("/")[-1], r))
    out.append(
      Group(
        row=r, label=label, runs=sorted(rows[r], key=lambda x: (x.seed is None, x.seed, x.path))
      )
    )
  return out


def _entry(v, index: int | None) -> float:
  if isinstance(v, list):
    if index is None:
      index = 0 if len(v) == 1 else None  # a one-entry list is a scalar (meta_loss)
    if index is None or index >= len(v):
      return np.nan
    v = v[index]
  try:
    return float(v)
  except (TypeError, ValueError):  # None, or not a number: a gap in the line
    return np.nan


def has_key(groups: list[Group], key: str) -> bool:
  return any(key in rec for g in groups for r in g.runs for rec in r.records)


def run_series(run: RunRecord, key: str, index: int | None = None) -> dict[int, float]:
  """step -> value (entry ``index`` of a list) for one run; None becomes NaN."""
  return {int(rec["step"]): _entry(rec[key], index) for rec in run.records if key in rec}


def mean_std(rows: list) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std (ddof=1; 0 with one value) over axis 0, ignoring NaN.

  Ragged rows are padded with NaN.
  """
  width = max(len(r) for r in rows)
  a = np.full((len(rows), width), np.nan)
  for i, r in enumerate(rows):
    a[i, : len(r)] = [np.nan if v is None else v for v in r]
  n = np.sum(np.isfinite(a), axis=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
    mean = np.nanmean(a, axis=0)
    std = np.where(n > 1, np.nanstd(a, axis=0, ddof=1) if len(rows) > 1 else 0.0, 0.0)
  return mean, np.nan_to_num(std)


def series(group: Group, key: str, index: int | None = None):
  """(steps, mean, std) over the group's seeds of ``key`` (entry ``index``),
  on the union of their steps; None if no run logs it."""
  per_run = [s for s in (run_series(r, key, index) for r in group.runs) if s]
  if not per_run:
    return None
  steps = sorted(set().union(*per_run))
  mean, std = mean_std([[s.get(t, np.nan) for t in steps] for s in per_run])
  return np.array(steps), mean, std
