"""Which runs an experiment's report counts, and why it leaves the others out.

Row r's seed k counts for an attack when ``WORKDIR/<r>/seed<k>`` holds that
attack's evaluation document and was trained as the row defines it (the
experiment's, the row's and the command's ``--config`` overrides, seed k):
the document's ``method``, and the config stored with the run's newest
checkpoint for every key those overrides set
(``runner.trained_config_differences``). Every other run is named with the
reason: missing, unreadable, unfinished, or trained otherwise (the keys
that differ).
"""

import dataclasses
import glob
import json
import os
import re
from collections.abc import Sequence

from caat_jax import config_lib
from caat_jax.experiments import runner, select
from caat_jax.experiments.registry import Experiment, Row


@dataclasses.dataclass
class Run:
  """One row x seed as the report sees it."""

  row: str
  seed: int
  path: str
  docs: dict  # attack -> evaluation document, of a run trained as the row says
  problems: list  # why (part of) it is left out; [] when it counts in full
  chosen: str = ""  # a selection row: the grid point chosen for this seed

  def message(self) -> str:
    return f"report: {self.row}/seed{self.seed} ({self.path}): " + "; ".join(self.problems)


def seeds_of(row_dir: str, seeds: int | None, default: int) -> list[int]:
  """The seeds a row should have: ``range(seeds)``, or with ``seeds`` None the
  experiment's ``default`` and any further ``seed<k>`` directory found."""
  want = set(range(default if seeds is None else seeds))
  if seeds is None and os.path.isdir(row_dir):
    for name in os.listdir(row_dir):
      m = re.fullmatch(r"seed(\d+)", name)
      if m:
        want.add(int(m.group(1)))
      elif os.path.isdir(os.path.join(row_dir, name)) and "=" in name:  # a selection's grid point
        want.update(seeds_of(os.path.join(row_dir, name), None, 0))
  return sorted(want)


def _unreadable(path: str) -> list[str]:
  """'file (why)' for each evaluation file of ``path`` that holds no document."""
  out = []
  for p in [os.path.join(path, "eval.json")] + sorted(glob.glob(os.path.join(path, "eval_*.json"))):
    if not os.path.isfile(p) or os.path.basename(p) == "eval_sanity.json":
      continue
    try:
      with open(p) as f:
        content = json.load(f)
    except (OSError, ValueError) as e:
      out.append(f"{os.path.basename(p)} ({str(e).splitlines()[0]})")
      continue
    items = content if isinstance(content, list) else [content]
    if not items or not all(isinstance(d, dict) and "attack" in d for d in items):
      out.append(f"{os.path.basename(p)} (not a list of evaluation documents)")
  return out


def _differences(spec: runner.RunSpec, docs: dict) -> list[tuple]:
  """[(key, the run's value, the row's)] where the run was trained otherwise."""
  try:
    config = runner.build_config(spec)
  except (config_lib.ConfigError, ValueError, KeyError):
    return []  # the row cannot be built here: nothing to compare with
  diffs = {}
  for d in docs.values():
    if "method" in d and d["method"] != config.method:
      diffs["method"] = ("method", d["method"], config.method)
  keys = [o.split("=", 1)[0] for o in spec.overrides if not o.startswith("eval.")]
  for d in runner.trained_config_differences(spec.workdir, config, keys):
    diffs.setdefault(d[0], d)
  return [diffs[k] for k in sorted(diffs)]


def check(exp: Experiment, row: Row, seed: int, workdir: str, extra: Sequence[str] = ()) -> Run:
  """Row ``row``'s run of ``seed`` under ``workdir``, checked; for a
  selection row, the run of the grid point its criterion chose."""
  tag = ""
  if row.select:
    tag, values, missing = select.chosen(row.select, workdir, row.name, seed)
    if tag is None:
      path = os.path.join(workdir, row.name)
      run = Run(row.name, seed, path, {}, [])
      run.problems.append(
        f"selection incomplete: {row.select.criterion} not measured for {', '.join(missing)} "
        f"({len(values)} of {len(values) + len(missing)} grid points done); left out"
      )
      return run
  spec = runner.spec(exp, row, seed, workdir, extra, tag)
  path = spec.workdir
  run = Run(row.name, seed, path, {}, [], tag)
  if not os.path.isdir(path):
    run.problems.append("missing (no run directory); left out")
    return run
  bad = _unreadable(path)
  docs = runner.documents(path)
  diffs = _differences(spec, docs)
  if diffs:
    keys = ", ".join(f"{k}={o!r} (row: {n!r})" for k, o, n in diffs[:6])
    run.problems.append(f"trained otherwise than the row: {keys}; left out")
    return run
  run.docs = docs
  missing = [a for a in exp.attacks if a not in docs]
  if not missing and not bad:
    return run
  reasons = [f"unreadable {', '.join(bad)}"] if bad else []
  if missing and not bad:
    done = os.path.isfile(os.path.join(path, "eval.json"))
    why = "run the experiment again to evaluate it" if done else "training unfinished"
    reasons.append(f"no evaluation of {', '.join(missing)} ({why})")
  if not missing:
    reasons.append("its other evaluations count")
  elif len(missing) < len(exp.attacks):
    reasons.append(f"left out of the {', '.join(missing)} table")
  else:
    reasons.append("left out")
  run.problems.append("; ".join(reasons))
  return run
