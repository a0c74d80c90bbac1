"""Hyper-parameter selection as the paper does it: a row declares a grid
(``Selection({"caat.lam": (2/3, 1, 1.5, 6)})``), the runner trains every
value, and per seed the value with the lowest criterion is the row's model.

The criterion is measured on a split that is not the test split: the clean,
class-balanced meta set that Meta-CAAT's meta-gradient uses (the paper's
Section 6.1: "300 samples in each category ... helping us tune the
hyperparameters"; 10 per class on digits). ``CRITERIA`` names each criterion
by its split and attack; the selector (``choose``) is given only the
criterion documents of that split, never a test evaluation.

Layout: candidate ``tag`` (``caat.lam=1.5``) of row ``r``, seed k, runs in
``WORKDIR/r/<tag>/seed<k>`` like any run, plus its criterion document
``select_<split>_<attack>.json``; ``WORKDIR/r/selection_seed<k>.json``
records every candidate's criterion and the choice (``record``). The
report reads the chosen candidate's test documents (``chosen``).
"""

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence

# name -> (split of the dataset, attack, column of the document, description)
CRITERIA: dict[str, tuple[str, str, str, str]] = {
  "meta_pgd20": (
    "meta",
    "pgd20",
    "robust",
    "class-average PGD-20 robust error on the clean meta set",
  ),
}
# Never a criterion's split: what the report's numbers come from.
FORBIDDEN_SPLITS = ("test",)


@dataclasses.dataclass(frozen=True)
class Selection:
  """A grid over config keys and the criterion that picks from it.

  ``grid`` is given as a mapping ``{"caat.lam": (2/3, 1, 1.5, 6)}`` (several
  keys: every combination) and stored as a tuple of (key, values) pairs."""

  grid: tuple[tuple[str, tuple], ...]
  criterion: str = "meta_pgd20"

  def __init__(self, grid: Mapping[str, Sequence] | Sequence, criterion: str = "meta_pgd20"):
    pairs = tuple(grid.items()) if isinstance(grid, Mapping) else tuple(grid)
    pairs = tuple((str(k), tuple(v)) for k, v in pairs)
    if not pairs or any(not v for _, v in pairs):
      raise ValueError(f"select={dict(pairs)!r}: every key needs at least one value")
    if criterion not in CRITERIA:
      raise ValueError(f"select criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    if CRITERIA[criterion][0] in FORBIDDEN_SPLITS:
      raise ValueError(f"select criterion {criterion!r} reads the test split")
    object.__setattr__(self, "grid", pairs)
    object.__setattr__(self, "criterion", criterion)

  @property
  def description(self) -> str:
    return CRITERIA[self.criterion][3]

  def candidates(self) -> list[tuple[str, tuple[str, ...]]]:
    """[(tag, overrides)] in grid order: ``("caat.lam=1.5", ("caat.lam=1.5",))``."""
    keys = [k for k, _ in self.grid]
    out = []
    for combo in itertools.product(*(v for _, v in self.grid)):
      overrides = tuple(f"{k}={v!r}" for k, v in zip(keys, combo))
      tag = ",".join(f"{k}={_short(v)}" for k, v in zip(keys, combo))
      out.append((tag, overrides))
    return out

  def text(self) -> str:
    """'caat.lam in {0.667, 1, 1.5, 6}' for labels and notes."""
    return "; ".join(f"{k} in {{{', '.join(_short(v) for v in vs)}}}" for k, vs in self.grid)


def _short(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def criterion_path(run_dir: str, criterion: str) -> str:
  split, attack, _, _ = CRITERIA[criterion]
  return os.path.join(run_dir, f"select_{split}_{attack}.json")


def record_path(row_dir: str, seed: int) -> str:
  return os.path.join(row_dir, f"selection_seed{seed}.json")


def read_criterion(run_dir: str, criterion: str) -> dict | None:
  """The candidate's criterion document, or None (missing or unreadable)."""
  try:
    with open(criterion_path(run_dir, criterion)) as f:
      doc = json.load(f)
  except (OSError, ValueError):
    return None
  return doc if isinstance(doc, dict) and "avg" in doc else None


def evaluate_criterion(run_dir: str, criterion: str) -> dict:
  """Restores the run, evaluates the criterion's attack on the criterion's
  split (never the test split), writes and returns the document."""
  # Imported here: planning and reporting need neither JAX devices nor the trainer.
  from caat_jax import evaluate, evaluators  # pylint: disable=import-outside-toplevel

  split_name, attack, _, _ = CRITERIA[criterion]
  assert split_name not in FORBIDDEN_SPLITS
  run, variables, step = evaluate.load_run(run_dir)
  c = run.config
  split = getattr(run.dataset, split_name)
  if len(split.labels) == 0:
    raise ValueError(
      f"select criterion {criterion!r}: the {split_name} split of {run_dir} is empty "
      "(data.meta_per_class=0)"
    )
  docs, _ = run.evaluator.evaluate(
    variables,
    split,
    (attack,),
    run.dataset.num_classes,
    eps=c.eval.eps,
    step_size=c.eval.step_size,
    batch_size=c.eval.batch_size,
    num_examples=0,
    labels={"method": c.method, "dataset": c.data.name, "model": c.model},
  )
  doc = dict(docs[0], split=split_name, criterion=criterion, step=int(step))
  evaluators.write_json(criterion_path(run_dir, criterion), doc)
  return doc


def criterion_value(doc: Mapping, criterion: str) -> float:
  split, _, column, _ = CRITERIA[criterion]
  if doc.get("split") != split:
    raise ValueError(
      f"selection was given a document of split {doc.get('split')!r}; criterion "
      f"{criterion!r} reads only {split!r}"
    )
  return float(doc["avg"][column])


def choose(docs: Mapping[str, Mapping], criterion: str) -> str:
  """The tag with the lowest criterion; ties go to the first in grid order.

  ``docs`` maps each candidate's tag to its criterion document, in grid
  order; a document of another split (the test split) is refused."""
  if not docs:
    raise ValueError("selection over no candidates")
  values = {tag: criterion_value(d, criterion) for tag, d in docs.items()}
  return min(values, key=lambda t: (values[t], list(values).index(t)))


def row_dir(workdir: str, row_name: str) -> str:
  return os.path.join(workdir, row_name)


def candidate_dir(workdir: str, row_name: str, tag: str, seed: int) -> str:
  return os.path.join(workdir, row_name, tag, f"seed{seed}")


def chosen(selection: Selection, workdir: str, row_name: str, seed: int):
  """(tag, {tag: criterion value}, missing tags) for row ``row_name``'s seed:
  tag None while some candidate has no criterion document."""
  docs, missing = {}, []
  for tag, _ in selection.candidates():
    doc = read_criterion(candidate_dir(workdir, row_name, tag, seed), selection.criterion)
    if doc is None:
      missing.append(tag)
    else:
      docs[tag] = doc
  values = {t: criterion_value(d, selection.criterion) for t, d in docs.items()}
  if missing:
    return None, values, missing
  return choose(docs, selection.criterion), values, []


def record(selection: Selection, workdir: str, row_name: str, seed: int) -> str | None:
  """Writes ``selection_seed<k>.json`` once every candidate is measured;
  returns the chosen tag (None: candidates missing, nothing written)."""
  tag, values, missing = chosen(selection, workdir, row_name, seed)
  if tag is None:
    return None
  out = {
    "criterion": selection.criterion,
    "description": selection.description,
    "grid": {k: list(v) for k, v in selection.grid},
    "values": values,
    "chosen": tag,
    "run": os.path.join(tag, f"seed{seed}"),
  }
  os.makedirs(row_dir(workdir, row_name), exist_ok=True)
  with open(record_path(row_dir(workdir, row_name), seed), "w") as f:
    json.dump(out, f, indent=1)
  return tag


# The runner's three steps for selection rows (``spec``: a ``runner.RunSpec``).
def done(spec) -> bool:
  """A selection candidate holds its criterion document (other runs: True)."""
  if not spec.candidate:
    return True
  return read_criterion(spec.workdir, spec.row.select.criterion) is not None


def step(spec) -> None:
  """A selection candidate's criterion evaluation, if it is missing."""
  if spec.candidate and not done(spec):
    evaluate_criterion(spec.workdir, spec.row.select.criterion)


def record_all(specs, workdir: str, log=print) -> None:
  """Per selection row and seed whose candidates are all measured: the
  choice, written to ``<row>/selection_seed<k>.json`` and logged."""
  seen = set()
  for s in specs:
    if not s.candidate or (s.row.name, s.seed) in seen:
      continue
    seen.add((s.row.name, s.seed))
    tag = record(s.row.select, workdir, s.row.name, s.seed)
    if tag is not None:
      log(f"{s.row.name} seed {s.seed}: selected {tag} ({s.row.select.description})")
