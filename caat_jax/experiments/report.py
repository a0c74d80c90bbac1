"""An experiment's results in the paper's layout: rows x (average and
worst-class natural, boundary, robust error) or AutoAttack accuracy, mean ±
sample standard deviation over seeds, the paper's number beside ours.

Reads every ``WORKDIR/<row>/seed<k>`` run's evaluation documents
(``eval.json`` / ``eval_<attack>.json``); writes ``report.md`` and
``report.csv`` and, unless told not to, the figures (``caat_jax.plots``).
"""

import csv
import math
import os
import sys
from collections.abc import Sequence

from caat_jax.experiments import counted, masking, paired, paper
from caat_jax.experiments.registry import Experiment

ERROR_COLUMNS = (
  "avg_natural",
  "worst_natural",
  "avg_boundary",
  "worst_boundary",
  "avg_robust",
  "worst_robust",
)
AA_COLUMNS = ("autoattack_accuracy", "avg_natural", "avg_robust", "worst_robust")


def values(doc: dict) -> dict[str, float]:
  """One evaluation document as the table's columns (percent).

  ``autoattack_accuracy`` is 100 minus the class-average robust error: the
  overall robust accuracy on a class-balanced test set (CIFAR-10's is).
  """
  out = {
    f"{agg}_{kind}": float(doc[agg][kind])
    for agg in ("avg", "worst")
    for kind in ("natural", "boundary", "robust")
  }
  out["autoattack_accuracy"] = 100.0 - out["avg_robust"]
  return out


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for one value)."""
  n = len(xs)
  m = sum(xs) / n
  return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def check_runs(
  exp: Experiment,
  workdir: str,
  seeds: int | None = None,
  rows: Sequence[str] | None = None,
  extra: Sequence[str] = (),
  on_problem=None,
) -> dict[tuple[str, int], counted.Run]:
  """{(row, seed): ``counted.check``} of every run of the selected rows.
  ``on_problem(message)`` is called once for each run left out (in part or
  in full), with the reason."""
  checked = {}
  for row in [exp.row(r) for r in rows] if rows else exp.rows:
    for seed in counted.seeds_of(os.path.join(workdir, row.name), seeds, exp.seeds):
      run = counted.check(exp, row, seed, workdir, extra)
      checked[row.name, seed] = run
      if run.problems and on_problem is not None:
        on_problem(run.message())
  return checked


def collect(
  exp: Experiment,
  checked: dict[tuple[str, int], counted.Run],
  rows: Sequence[str] | None = None,
) -> list[dict]:
  """[{row, label, paper_row, attack, seeds: [k], expected, columns: {col: [per seed]}}]
  from ``check_runs``' runs.

  A seed counts when its run holds the attack's document and was trained as
  the row defines it (``counted.check``); ``expected`` is how many seeds the
  row should have."""
  selected = [exp.row(r) for r in rows] if rows else list(exp.rows)
  out = []
  for attack in exp.attacks:
    for row in selected:
      runs = [r for (name, _), r in checked.items() if name == row.name]
      found, cols, chosen = [], {}, []
      for run in runs:
        doc = run.docs.get(attack)
        if doc is None:
          continue
        found.append(run.seed)
        chosen.append(run.chosen)
        for k, v in values(doc).items():
          cols.setdefault(k, []).append(v)
      out.append(
        dict(
          row=row.name,
          label=row.label,
          paper_row=row.paper,
          attack=attack,
          seeds=found,
          expected=len(runs),
          columns=cols,
          chosen=chosen if row.select else [],
          select=row.select,
        )
      )
  return out


def reference_of(exp: Experiment, results: list[dict], reference: str | None) -> str:
  """The row the paired differences are taken to: ``reference`` (the
  ``--reference`` flag), else the experiment's; "" for none. An unknown row
  raises ``KeyError`` naming the valid ones."""
  rows = {r["row"] for r in results}
  if reference is None:  # the experiment's, unless --rows left it out
    return exp.reference if exp.reference in rows else ""
  name = reference
  if name and name not in rows:
    raise KeyError(
      f"--reference={name!r}: not a row of this report; rows: "
      + ", ".join(dict.fromkeys(r["row"] for r in results))
    )
  return name


def add_paired(results: list[dict], reference: str) -> None:
  """Each result gets ``paired``: {column: paired.paired(...)} against the
  reference row's result of the same attack (the reference itself: none)."""
  refs = {r["attack"]: r for r in results if r["row"] == reference}
  for r in results:
    ref = refs.get(r["attack"])
    r["paired"] = {}
    if not reference or ref is None or r is ref:
      continue
    for c in columns_for(r["attack"]):
      mine = dict(zip(r["seeds"], r["columns"].get(c, [])))
      theirs = dict(zip(ref["seeds"], ref["columns"].get(c, [])))
      r["paired"][c] = paired.paired(mine, theirs)


def seeds_cell(r: dict) -> str:
  """'2', or '1/2' for a row missing seeds."""
  n, want = len(r["seeds"]), r.get("expected", len(r["seeds"]))
  return str(n) if n >= want else f"{n}/{want}"


def columns_for(attack: str) -> tuple[str, ...]:
  if attack.startswith("pgd"):
    return ERROR_COLUMNS
  return AA_COLUMNS


def _cell(vals: Sequence[float] | None, ref: float | None) -> str:
  text = "–"
  if vals:
    m, s = mean_std(vals)
    text = f"{m:.2f} ± {s:.2f}" if len(vals) > 1 else f"{m:.2f}"
  if ref is not None:
    text += f" ({ref:g})"
  return text


def markdown(exp: Experiment, results: list[dict], workdir: str, reference: str = "") -> str:
  table = exp.paper_table
  lines = [f"# {exp.title}", ""]
  if exp.note:
    lines += [exp.note, ""]
  lines += [
    f"Runs: `{workdir}`. Cells: mean ± sample standard deviation over the seeds "
    "counted (percent; one seed: no spread)"
    + (", the paper's number in parentheses" if table else "")
    + ". Seeds `1/2`: a row missing runs (each run left out is named when the report is made).",
    "",
  ]
  for attack in exp.attacks:
    cols = columns_for(attack)
    lines += [
      f"## {attack}",
      "",
      "| Method | seeds | " + " | ".join(paper.COLUMNS[c] for c in cols) + " |",
      "|---|---|" + "---|" * len(cols),
    ]
    for r in results:
      if r["attack"] != attack:
        continue
      refs = [table.value(r["paper_row"], c) if table and r["paper_row"] else None for c in cols]
      cells = [_cell(r["columns"].get(c), ref) for c, ref in zip(cols, refs)]
      lines.append(f"| {r['label']} | {seeds_cell(r)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += _selection_lines(results, attack)
    if attack == exp.attacks[0]:
      shown = {r["row"] for r in results}
      notes = [f"- {r.label}: {r.note}" for r in exp.rows if r.note and r.name in shown]
      lines += ["Rows run otherwise than the paper's:", "", *notes, ""] if notes else []
    lines += _paired_lines(results, attack, reference)
  return "\n".join(lines)


def _selection_lines(results: list[dict], attack: str) -> list[str]:
  """Which grid point each seed of a selection row chose, and by what."""
  out = []
  for r in results:
    if r["attack"] != attack or not r.get("select"):
      continue
    picks = ", ".join(f"seed {k}: {t}" for k, t in zip(r["seeds"], r["chosen"])) or "none yet"
    out.append(
      f"- {r['label']}: selected from {r['select'].text()} by {r['select'].description} "
      f"(never the test set); chosen per seed: {picks}. Its cells are the chosen models' "
      "test numbers."
    )
  return out + [""] if out else []


def _paired_lines(results: list[dict], attack: str, reference: str) -> list[str]:
  rows = [r for r in results if r["attack"] == attack and r.get("paired")]
  if not rows:
    return []
  label = next(r["label"] for r in results if r["row"] == reference)
  cols = columns_for(attack)
  return [
    f"Paired difference to {label} (row minus reference, over the seeds both ran; "
    "95% confidence interval, paired t-test p; n: seeds paired):",
    "",
    "| Method | " + " | ".join(paper.COLUMNS[c] for c in cols) + " |",
    "|---|" + "---|" * len(cols),
    *(
      f"| {r['label']} | " + " | ".join(paired.cell(r["paired"][c]) for c in cols) + " |"
      for r in rows
    ),
    "",
  ]


def write_csv(path: str, exp: Experiment, results: list[dict], reference: str = "") -> None:
  table = exp.paper_table
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      [
        "experiment",
        "row",
        "label",
        "attack",
        "column",
        "mean",
        "std",
        "n",
        "paper",
        "seeds",
        "values",
        "seeds_expected",
        "chosen",
        "reference",
        "n_paired",
        "diff",
        "ci_low",
        "ci_high",
        "p",
      ]
    )
    for r in results:
      for c in columns_for(r["attack"]):
        vals = r["columns"].get(c, [])
        m, s = mean_std(vals) if vals else (float("nan"), float("nan"))
        ref = table.value(r["paper_row"], c) if table and r["paper_row"] else None
        w.writerow(
          [
            exp.name,
            r["row"],
            r["label"],
            r["attack"],
            c,
            f"{m:.4f}",
            f"{s:.4f}" if len(vals) > 1 else "",  # no spread from one seed
            len(vals),
            "" if ref is None else ref,
            ";".join(map(str, r["seeds"])),
            ";".join(f"{v:.4f}" for v in vals),
            r.get("expected", len(vals)),
            ";".join(r.get("chosen", [])),
            *_paired_fields(r, c, reference),
          ]
        )


def _paired_fields(r: dict, column: str, reference: str) -> list[str]:
  p = r.get("paired", {}).get(column)
  if p is None:
    return ["", "", "", "", "", ""]
  f = lambda x: "" if math.isnan(x) else f"{x:.4f}"
  return [reference, str(p["n"]), f(p["diff"]), f(p["ci_low"]), f(p["ci_high"]), f(p["p"])]


def write(
  exp: Experiment,
  workdir: str,
  out: str | None = None,
  seeds: int | None = None,
  rows: Sequence[str] | None = None,
  figures: bool = True,
  formats: tuple[str, ...] = ("png", "svg"),
  extra: Sequence[str] = (),
  on_problem=None,
  reference: str | None = None,
) -> list[str]:
  """Writes report.md, report.csv (and the figures of the selected rows) into
  ``out``; returns the paths. Each run left out is named through
  ``on_problem(message)`` (default: a line on stderr); ``extra``: the
  ``--config`` overrides the runs were trained with; ``reference``: the row
  the paired differences are taken to (default the experiment's, "" none)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir}: no such directory")
  if on_problem is None:
    on_problem = lambda m: sys.stderr.write(m + "\n")
  problems = []
  checked = check_runs(exp, workdir, seeds, rows, extra, problems.append)
  results = collect(exp, checked, rows)
  if not any(r["seeds"] for r in results):
    raise FileNotFoundError(
      f"no finished run of {exp.name} under {workdir} (expected {workdir}/<row>/seed<k>/"
      f"eval.json; rows: {', '.join(r.name for r in exp.rows)})"
    )
  for message in problems:  # named once some run counts (else the error above says it)
    on_problem(message)
  reference = reference_of(exp, results, reference)
  add_paired(results, reference)
  out = out or workdir
  os.makedirs(out, exist_ok=True)
  md, csv_path = os.path.join(out, "report.md"), os.path.join(out, "report.csv")
  text = markdown(exp, results, workdir, reference)
  checks = masking.row_checks(exp, checked, rows)
  with open(md, "w") as f:
    f.write(text + ("\n" + masking.section(checks) if checks else ""))
  write_csv(csv_path, exp, results, reference)
  written = [md, csv_path]
  if figures:
    from caat_jax import plots  # pylint: disable=import-outside-toplevel

    selected = [exp.row(r) for r in rows] if rows else exp.rows
    written += plots.draw_all(
      workdir,
      os.path.join(out, "figures"),
      labels={r.name: r.label for r in selected},
      only_labelled=True,
      formats=formats,
    )
  return written
