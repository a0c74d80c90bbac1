"""The controls a reviewer asks of the digits noise and long-tail tables
(issue 25), each an experiment that shares its table's ``--workdir``:

* ``digits_table<N>_controls``: the baselines (PGD-AT, TRADES β = 6, FRL
  ReWeight) trained once more with the clean meta set appended to their
  training split (``data.meta_in_train``), since CAAT learns from those
  clean examples; beside the plain baselines and Meta-CAAT (Grad-based) at
  λ = 1 and with λ selected on the meta set as the paper does, all paired
  to the λ-selected row on the same seeds (the comparison a reviewer
  reads: every model has seen the same clean examples, each method at its
  own protocol). Only the ``+meta`` rows train when run in
  ``digits_table<N>``'s workdir: the others are that table's runs (same
  names and settings).
* ``digits_table<N>_autoattack``: AutoAttack (standard) on every row of the
  table, every seed, the whole test split, evaluating the table's trained
  models (the documents carry the stage flags, the final check and the
  reference's warnings: with PGD-20 beside them, what a gradient-masking
  check reads).
"""

import dataclasses

from caat_jax.experiments.rows import Experiment, Row

TABLES = (5, 6, 7, 8)  # the digits counterparts with label noise or a long tail
BASELINES = ("pgd-at", "trades-b6", "frl-reweight")
# Meta-CAAT at λ = 1 (the table's fixed row) and as the paper runs it.
META_CAAT = ("meta-caat-grad", "meta-caat-grad-select")
REFERENCE = "meta-caat-grad-select"
META_IN_TRAIN = "data.meta_in_train=true"


def with_meta_in_train(row: Row) -> Row:
  """``row`` trained on its training split plus the clean meta set."""
  return dataclasses.replace(
    row,
    name=f"{row.name}+meta",
    label=f"{row.label} + meta set",
    overrides=row.overrides + (META_IN_TRAIN,),
    paper=None,
    note=(row.note + " " if row.note else "")
    + "Control: the clean meta set appended to training (data.meta_in_train).",
  )


def control_experiments(experiments: dict[str, Experiment]) -> list[Experiment]:
  """The controls of each ``digits_table<N>`` of ``TABLES`` in
  ``experiments`` (the registry built so far)."""
  out = []
  for n in TABLES:
    table = experiments[f"digits_table{n}"]
    share = f" Give it digits_table{n}'s --workdir to reuse that table's trained models."
    rows = []
    for name in BASELINES:
      rows += [table.row(name), with_meta_in_train(table.row(name))]
    rows += [table.row(name) for name in META_CAAT]
    common = dict(table=None, seeds=table.seeds, overrides=table.overrides)
    out.append(
      Experiment(
        f"digits_table{n}_controls",
        f"{table.title}: baselines also trained on the meta set",
        tuple(rows),
        table.attacks,
        note=table.note + share + " Only the '+meta' rows train then.",
        reference=REFERENCE,
        **common,
      )
    )
    out.append(
      Experiment(
        f"digits_table{n}_autoattack",
        f"{table.title}: AutoAttack on every row",
        table.rows,
        ("autoattack",),
        note=table.note
        + share
        + " AutoAttack (standard) on the whole test split, every row and seed; "
        "compare with digits_table" + f"{n}'s PGD-20 for the gap a gradient-masking check reads.",
        reference=table.reference,
        **common,
      )
    )
  return out
