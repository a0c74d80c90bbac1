"""The paper's tables and figures as data: experiments made of rows.

A ``Row`` is one line of a table: a config file (``path[:variant]``) plus
``--config.key=value`` overrides, spelled as on the command line so that
``experiments emit`` can print them unchanged. An ``Experiment`` is a table
or figure: its rows, the attacks its numbers come from, the paper's table
(``paper.TABLES``) and the overrides every row shares (label noise, long
tail, model). Each paper experiment has a ``digits_*`` counterpart that runs
on a CPU in minutes per row (see ``DIGITS_SCALE`` for what is scaled down).

Adding an experiment: build its rows with ``rows(family, names)`` (or write
``Row``s by hand) and add it to ``EXPERIMENTS``; ``experiments list`` shows
it and the tests validate every row's config without training.
"""

import dataclasses

from caat_jax.experiments.controls import control_experiments
from caat_jax.experiments.meta_variants import meta_variant_experiments
from caat_jax.experiments.rows import (
  DIGITS_NOTE,
  DIGITS_SCALE,
  FAMILIES,
  LONG_TAIL_DIGITS,
  MATCHED_ROWS,
  NO_BASELINE_REWEIGHT,
  PAPER_ROWS,
  ROW_DEFINITIONS,
  SELECT_NAMES,
  Experiment,
  Row,
  feature_rows,
  paired_experiments,
  rows,
  setting_rows,
)

__all__ = ["EXPERIMENTS", "Experiment", "Row", "get"]


def _noise_diagnostics() -> Experiment:
  """Issue 17: why Meta-CAAT under 40% uniform noise trails TRADES (digits).

  Rows share digits_table6's settings and names: give it digits_table6's
  --workdir and the rows both have (trades-b6, meta-caat-grad) are reused.
  """
  base = rows(
    "digits", ("trades-b6", "meta-caat-grad", "meta-caat-grad-lam6", "reinforce-caat-lam6")
  )
  trades, meta, meta6, reinforce6 = base

  def variant(row: Row, name: str, label: str, *extra: str) -> Row:
    return Row(name, f"{row.label}: {label}", row.config, row.overrides + extra)

  diag = (
    variant(meta, "meta-caat-fixed", "fixed bound", "caat.bound=fixed"),
    variant(
      meta,
      "meta-caat-grad-clean-point",
      "grad bound at the clean point",
      "caat.grad_bound_point=clean",
    ),
    variant(
      meta, "meta-caat-grad-anti0", "anti-adversary bound 0 (plain CE)", "caat.anti_bound_scale=0.0"
    ),
    variant(
      meta, "meta-caat-grad-anti0.25", "anti-adversary bound x 0.25", "caat.anti_bound_scale=0.25"
    ),
    variant(
      meta, "meta-caat-grad-anti0.5", "anti-adversary bound x 0.5", "caat.anti_bound_scale=0.5"
    ),
    variant(
      meta,
      "meta-caat-grad-anticap1",
      "anti-adversary bound capped at eps",
      "caat.anti_bound_cap=1.0",
    ),
    variant(meta, "meta-caat-grad-hard", "hard weights (straight-through)", "caat.weights=hard"),
    variant(meta, "meta-caat-grad-clean-ce", "meta objective clean CE", "meta.objective=clean_ce"),
    variant(meta, "meta-caat-grad-official", "meta objective official", "meta.objective=official"),
    variant(
      trades, "oracle-trades-b6", "oracle: corrupted samples dropped", "data.drop_corrupted=true"
    ),
    variant(
      meta, "oracle-meta-caat-grad", "oracle: corrupted samples dropped", "data.drop_corrupted=true"
    ),
    variant(
      trades,
      "trades-b6-normalized",
      "official threat model (eps x std)",
      "attack.threat_model=normalized",
    ),
    variant(
      meta,
      "meta-caat-grad-normalized",
      "official threat model (eps x std)",
      "attack.threat_model=normalized",
    ),
    # The two effects the rows above isolate, together: the KL weight
    # matched to TRADES' and no anti-adversarial step (plain CE).
    variant(
      meta6,
      "meta-caat-grad-lam6-anti0",
      "anti-adversary bound 0 (plain CE)",
      "caat.anti_bound_scale=0.0",
    ),
    variant(
      reinforce6,
      "reinforce-caat-lam6-paper",
      "the paper's reward (Eq. 34)",
      "reinforce.reward=paper",
    ),
    # The best fixed treatment: corrupted samples always anti-adversarial
    # (or plain CE), clean ones always adversarial, fixed bound.
    variant(
      meta6,
      "oracle-anti-lam6",
      "oracle: corrupted anti-adversarial, clean adversarial",
      "caat.direction=oracle",
    ),
    variant(
      meta6,
      "oracle-ce-lam6",
      "oracle: corrupted plain CE, clean adversarial",
      "caat.direction=oracle",
      "caat.anti_bound_scale=0.0",
    ),
  )
  return Experiment(
    "digits_noise_diagnostics",
    "Issue 17: Meta-CAAT under 40% uniform noise, diagnostics",
    base + diag,
    ("pgd20",),
    "table6",
    seeds=1,
    overrides=DIGITS_SCALE + ("data.noise_type=uniform", "data.noise_rate=0.4"),
    note=DIGITS_NOTE + " One seed per diagnostic; see docs/results/noise.md.",
    reference="meta-caat-grad",
  )


def _build() -> dict[str, Experiment]:
  exps: list[Experiment] = []
  exps += paired_experiments(
    "table1",
    "Table 1: standard CIFAR-10",
    "table1",
    "cifar10",
    PAPER_ROWS + SELECT_NAMES,
    digits_names=PAPER_ROWS + MATCHED_ROWS + SELECT_NAMES,
  )
  exps += paired_experiments(
    "table2",
    "Table 2: standard SVHN",
    "table2",
    "svhn",
    PAPER_ROWS,
    note="SVHN rows use configs/svhn.py (FRL and Meta-CAAT have no SVHN config of their own).",
  )
  t3 = paired_experiments(
    "table3",
    "Table 3: AutoAttack on standard CIFAR-10",
    "table3",
    "cifar10",
    NO_BASELINE_REWEIGHT,
    attacks=("autoattack",),
    digits_names=NO_BASELINE_REWEIGHT + MATCHED_ROWS,
    note="Run with the same --workdir as table1 to evaluate its trained models.",
  )
  # The digits AutoAttack counterpart evaluates digits_table1's models (same
  # rows and configs): give both the same --workdir.
  t3[1] = dataclasses.replace(
    t3[1],
    attacks=("autoattack",),
    note=DIGITS_NOTE
    + (
      " AutoAttack (standard) on the first 120 test points; give it digits_table1's "
      "--workdir to evaluate those models."
    ),
    eval_examples=120,
  )
  exps += t3
  exps += paired_experiments(
    "table4",
    "Table 4: AutoAttack on ImageNet",
    "table4",
    "imagenet",
    NO_BASELINE_REWEIGHT,
    attacks=("autoattack",),
    note="Streamed imagenet2012 (prepare it first: docs/running.md, ImageNet); "
    "ResNet-50, settings and their sources in configs/imagenet.py.",
  )[:1]
  noise = (
    "pgd-at",
    "trades-b1",
    "trades-b6",
    "frl-reweight",
    "frl-remargin",
    "frl-reweight-remargin",
    "meta-caat-grad",
    "meta-caat-remargin",
    "reinforce-caat",
  )
  exps += paired_experiments(
    "table5",
    "Table 5: CIFAR-10, 20% flip2 noise",
    "table5",
    "cifar10",
    noise + SELECT_NAMES,
    overrides=("data.noise_type=flip2", "data.noise_rate=0.2"),
    digits_names=noise + MATCHED_ROWS + SELECT_NAMES,
    note="The paper's '20% pair-flip' is the official code's two-class flip "
    "(flip2, docs/method.md §10).",
  )
  exps += paired_experiments(
    "table6",
    "Table 6: CIFAR-10, 40% uniform noise",
    "table6",
    "cifar10",
    noise + SELECT_NAMES,
    overrides=("data.noise_type=uniform", "data.noise_rate=0.4"),
    digits_names=noise + MATCHED_ROWS + SELECT_NAMES,
  )
  exps += paired_experiments(
    "table7",
    "Table 7: long-tailed CIFAR-10, IF 10",
    "table7",
    "cifar10",
    noise + SELECT_NAMES,
    overrides=("data.imbalance_factor=10.0",),
    digits_names=noise + MATCHED_ROWS + SELECT_NAMES,
    digits_overrides=LONG_TAIL_DIGITS[10],
  )
  exps += paired_experiments(
    "table8",
    "Table 8: long-tailed CIFAR-10, IF 100",
    "table8",
    "cifar10",
    noise + SELECT_NAMES,
    overrides=("data.imbalance_factor=100.0",),
    digits_overrides=LONG_TAIL_DIGITS[100],
  )
  shared = (
    "Its CAAT rows are table7's (same settings and names): give it table7's "
    "--workdir and only 'without' trains."
  )
  t9 = paired_experiments(
    "table9",
    "Table 9: the 'Without' ablation, IF 10",
    "table9",
    "cifar10",
    ("meta-caat-grad", "meta-caat-remargin", "reinforce-caat", "without") + SELECT_NAMES,
    overrides=("data.imbalance_factor=10.0",),
    note=shared,
    digits_overrides=LONG_TAIL_DIGITS[10],
    reference="without",
  )
  t9[1] = dataclasses.replace(
    t9[1], note=t9[1].note + " " + shared.replace("table7", "digits_table7")
  )
  exps += t9
  exps += paired_experiments(
    "fig14",
    "Fig. 14: Settings I-IV of Meta-CAAT, standard CIFAR-10",
    None,
    "cifar10",
    (),
    custom_rows=setting_rows,
    reference="setting1",
  )
  exps += paired_experiments(
    "fig15",
    "Fig. 15: leaving out each training characteristic",
    None,
    "cifar10",
    (),
    custom_rows=feature_rows,
    reference="meta-caat-all",
  )
  # The supplementary material's variants (Tables; numbers not in
  # the paper text available here).
  exps.append(
    Experiment(
      "table1_wrn",
      "Table A-1: standard CIFAR-10, WRN-28-10",
      rows("cifar10", PAPER_ROWS),
      ("pgd10",),
      None,
      overrides=("model=wrn28_10",),
    )
  )
  exps.append(
    Experiment(
      "table1_pgd100",
      "Table A-2: standard CIFAR-10, PGD-100",
      rows("cifar10", PAPER_ROWS),
      ("pgd100",),
      None,
      note="Run with table1's --workdir to evaluate its trained models.",
    )
  )
  exps.append(
    Experiment(
      "table2_pgd100",
      "Table A-3: standard SVHN, PGD-100",
      rows("svhn", PAPER_ROWS),
      ("pgd100",),
      None,
      note="Run with table2's --workdir to evaluate its trained models.",
    )
  )
  # Beyond the paper: the KL weight sweep at matched settings (digits).
  sweep = []
  for lam in (1.0, 2.0, 6.0):
    tag = f"{lam:g}"
    trades, meta = ROW_DEFINITIONS["trades-b6"], ROW_DEFINITIONS["meta-caat-grad"]
    sweep.append(
      Row(
        f"trades-b{tag}",
        f"TRADES (β = {tag})",
        FAMILIES["digits"]["base"],
        (trades[2][0], f"trades.beta={lam}"),
      )
    )
    sweep.append(
      Row(
        f"meta-caat-grad-lam{tag}",
        f"Meta-CAAT (Grad-based), λ = {tag}",
        FAMILIES["digits"]["meta"],
        meta[2] + (f"caat.lam={lam}",),
      )
    )
  exps.append(
    Experiment(
      "digits_lam_sweep",
      "KL weight sweep: TRADES β vs Meta-CAAT λ (digits)",
      tuple(sweep),
      ("pgd20",),
      None,
      overrides=DIGITS_SCALE,
      note=DIGITS_NOTE,
      reference="trades-b6",
    )
  )
  exps.append(_noise_diagnostics())
  exps += meta_variant_experiments()
  exps += control_experiments({e.name: e for e in exps})
  out = {e.name: e for e in exps}
  assert len(out) == len(exps), "duplicate experiment names"
  return out


EXPERIMENTS: dict[str, Experiment] = _build()


def get(name: str) -> Experiment:
  if name not in EXPERIMENTS:
    raise KeyError(f"no experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
  return EXPERIMENTS[name]
