"""The gradient-masking check of a report (issue 25): for every row whose
runs hold both a PGD-20 and an AutoAttack evaluation, what a reader needs
to judge whether the robustness is real.

* AutoAttack minus PGD-20 robust error (class average, paired per seed): a
  stronger attack can only add errors; a large gap means PGD-20 overstated
  the robustness.
* The points only Square broke (robust error after Square minus after
  FAB-T): a black-box attack succeeding where three gradient attacks failed
  is the reference's sign of masked gradients.
* The reference's warnings carried by the AutoAttack documents.
"""

from collections.abc import Sequence

from caat_jax.experiments import counted
from caat_jax.experiments.rows import Experiment

PGD, AA = "pgd20", "autoattack"


def row_checks(
  exp: Experiment,
  checked: dict[tuple[str, int], counted.Run],
  rows: Sequence[str] | None = None,
) -> list[dict]:
  """[{row, label, seeds, gap: [per seed], square_only: [per seed],
  warnings: [distinct]}] for the rows with both documents in some run of
  ``checked`` (``report.check_runs``)."""
  out = []
  for row in [exp.row(r) for r in rows] if rows else exp.rows:
    found, gap, square_only, warnings = [], [], [], []
    for (name, seed), run in sorted(checked.items()):
      docs = run.docs
      if name != row.name or PGD not in docs or AA not in docs:
        continue
      pgd, aa = docs[PGD], docs[AA]
      found.append(seed)
      gap.append(float(aa["avg"]["robust"]) - float(pgd["avg"]["robust"]))
      stages = aa.get("stages", {})
      if "square" in stages and "fab-t" in stages:
        square_only.append(float(stages["square"]) - float(stages["fab-t"]))
      warnings += [w for w in aa.get("warnings", []) if w not in warnings]
    if found:
      out.append(
        dict(
          row=row.name,
          label=row.label,
          seeds=found,
          gap=gap,
          square_only=square_only,
          warnings=warnings,
        )
      )
  return out


def _mean(xs: Sequence[float]) -> str:
  return f"{sum(xs) / len(xs):.2f}" if xs else "-"


def section(checks: list[dict]) -> str:
  """The report's markdown section ('' when no row has both evaluations)."""
  if not checks:
    return ""
  lines = [
    "## Gradient-masking check",
    "",
    "Per row, over the seeds with both evaluations: AutoAttack minus PGD-20 "
    "class-average robust error (points; min / mean / max), the robust error "
    "only Square added after the gradient attacks (points, mean), and the "
    "reference's warnings.",
    "",
    "| Method | seeds | AA − PGD-20 (min / mean / max) | Square only | warnings |",
    "|---|---|---|---|---|",
  ]
  for c in checks:
    gap = f"{min(c['gap']):.2f} / {_mean(c['gap'])} / {max(c['gap']):.2f}"
    warn = "; ".join(c["warnings"]) or "none"
    lines.append(
      f"| {c['label']} | {len(c['seeds'])} | {gap} | {_mean(c['square_only'])} | {warn} |"
    )
  return "\n".join(lines + [""])
