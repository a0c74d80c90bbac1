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
from collections.abc import Sequence

from caat_jax.experiments import paper


@dataclasses.dataclass(frozen=True)
class Row:
  name: str  # directory under the experiment's workdir
  label: str  # shown in reports and figures
  config: str  # config file, relative to the repository root, with :variant
  overrides: tuple[str, ...] = ()  # "key=value", the --config.key=value spelling
  paper: str | None = None  # the paper table's row label; None: not in the paper


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  title: str
  rows: tuple[Row, ...]
  attacks: tuple[str, ...]  # evaluations the table needs, on every final model
  table: str | None = None  # key of paper.TABLES
  seeds: int = 3
  overrides: tuple[str, ...] = ()  # applied to every row, before the row's own
  eval_examples: int = 0  # test points for the evaluation (0: the whole split)
  note: str = ""  # what a reader must know: scaling, what differs from the paper
  unavailable: str = ""  # why it cannot run yet (empty: it can)

  def row(self, name: str) -> Row:
    for r in self.rows:
      if r.name == name:
        return r
    raise KeyError(f"experiment {self.name!r} has no row {name!r}; rows: "
                   + ", ".join(r.name for r in self.rows))

  @property
  def paper_table(self) -> paper.Table | None:
    return paper.TABLES.get(self.table) if self.table else None


# Row specifications shared by every dataset: (label, kind of base config,
# overrides starting with the method, paper row). The family gives each kind
# its config file.
ROW_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "pgd-at": ("PGD-AT", "base", ("method=pgd_at",), "PGD Adv. Training"),
    "trades-b1": ("TRADES (1/λ = 1)", "base", ("method=trades", "trades.beta=1.0"),
                  "TRADES (1/λ = 1)"),
    "trades-b6": ("TRADES (1/λ = 6)", "base", ("method=trades", "trades.beta=6.0"),
                  "TRADES (1/λ = 6)"),
    "baseline-reweight": ("Baseline ReWeight", "fairness",
                          ("method=frl", "fairness.mode=baseline_reweight"), "Baseline ReWeight"),
    "frl-reweight": ("FRL (ReWeight)", "fairness", ("method=frl", "fairness.mode=reweight"),
                     "FRL (ReWeight)"),
    "frl-remargin": ("FRL (ReMargin)", "fairness", ("method=frl", "fairness.mode=remargin"),
                     "FRL (ReMargin)"),
    "frl-reweight-remargin": ("FRL (ReWeight+ReMargin)", "fairness",
                              ("method=frl", "fairness.mode=reweight_remargin"),
                              "FRL (ReWeight+ReMargin)"),
    "meta-caat-grad": ("Meta-CAAT (Grad-based)", "meta", ("method=meta_caat", "caat.bound=grad"),
                       "Meta-CAAT (Grad-based)"),
    "meta-caat-remargin": ("Meta-CAAT (ReMargin)", "meta",
                           ("method=meta_caat", "caat.bound=remargin", "fairness.enabled=true"),
                           "Meta-CAAT (ReMargin)"),
    "reinforce-caat": ("Reinforce-CAAT", "reinforce", ("method=reinforce_caat",),
                       "Reinforce-CAAT"),
    "without": ("Without (rule: head anti, tail adv)", "meta",
                ("method=meta_caat", "caat.direction=rule", "caat.bound=fixed"), "Without"),
    # Beyond the paper: the KL weight matched to TRADES' beta = 6 (the paper
    # compares Meta-CAAT at lam = 1 and Reinforce-CAAT at lam = 0.005-0.1
    # with TRADES at 1/lambda = 6).
    "meta-caat-grad-lam6": ("Meta-CAAT (Grad-based), λ = 6", "meta",
                            ("method=meta_caat", "caat.bound=grad", "caat.lam=6.0"), None),
    "reinforce-caat-lam6": ("Reinforce-CAAT, λ = 6", "reinforce",
                            ("method=reinforce_caat", "reinforce.lam=6.0"), None),
}
PAPER_ROWS = ("pgd-at", "trades-b1", "trades-b6", "baseline-reweight", "frl-reweight",
              "frl-remargin", "frl-reweight-remargin", "meta-caat-grad", "meta-caat-remargin",
              "reinforce-caat")
MATCHED_ROWS = ("meta-caat-grad-lam6", "reinforce-caat-lam6")
NO_BASELINE_REWEIGHT = tuple(r for r in PAPER_ROWS if r != "baseline-reweight")

# Base config per (dataset family, kind): "base" for PGD-AT and TRADES (and
# any kind a family has no file for), "fairness" for FRL, "meta" for
# Meta-CAAT, "reinforce" for Reinforce-CAAT.
FAMILIES: dict[str, dict[str, str]] = {
    "cifar10": {"base": "configs/cifar10.py", "fairness": "configs/cifar10_frl.py",
                "meta": "configs/cifar10_meta_caat.py",
                "reinforce": "configs/cifar10_reinforce_caat.py"},
    "svhn": {"base": "configs/svhn.py", "reinforce": "configs/svhn_reinforce_caat.py"},
    "digits": {"base": "configs/digits.py", "meta": "configs/digits_meta_caat.py",
               "reinforce": "configs/digits_reinforce_caat.py"},
}

# What the digits counterparts change, for every row: one method per run
# (the digits config's suite off) and 10 epochs instead of 30 so that the
# whole set runs in hours on two CPU cores.
DIGITS_SCALE = ("suite=()", "num_epochs=10")
DIGITS_NOTE = ("Digits counterpart: 8x8 grey digits, small CNN, eps 0.1 (1.6 grey levels), "
               "10 epochs (the digits configs train 30), PGD-20 evaluation on the 360 test "
               "points; the paper: CIFAR-10, PreAct-ResNet-18, eps 8/255, PGD-10.")
# The long-tailed digits sets hold 551 (IF 10) and 333 (IF 100) training
# images instead of 1,337: their epochs are scaled so that every digits run
# takes the same 200 steps of batch 64 (10 epochs of them left the tail
# classes unlearned by every method: 80 and 50 steps).
LONG_TAIL_DIGITS = {10: ("data.imbalance_factor=10.0", "num_epochs=25"),
                    100: ("data.imbalance_factor=100.0", "num_epochs=40")}


def rows(family: str, names: Sequence[str], config_variant: dict[str, str] | None = None
         ) -> tuple[Row, ...]:
  """Rows ``names`` (keys of ``ROW_DEFINITIONS``) on the family's base configs;
  ``config_variant`` maps a row name to a ``:variant`` of its config."""
  out = []
  for name in names:
    label, kind, overrides, paper_row = ROW_DEFINITIONS[name]
    base = FAMILIES[family]
    config = base.get(kind, base["base"])
    if config_variant and name in config_variant:
      config += ":" + config_variant[name]
    out.append(Row(name, label, config, overrides, paper_row))
  return tuple(out)


def _settings(family: str) -> tuple[Row, ...]:
  """Fig. 14: Meta-CAAT's Settings I-IV (configs/meta_caat_variants.py)."""
  config = FAMILIES[family]["meta"]
  labels = ("I: adversaries, fixed bound", "II: adversaries, grad bound",
            "III: adversaries + anti, fixed bound", "IV: adversaries + anti, grad bound")
  return tuple(Row(f"setting{i}", f"Setting {label}", f"{config}:setting{i}")
               for i, label in enumerate(labels, 1))


FEATURES = ("loss", "margin", "gradient", "entropy", "class proportion", "class-average loss")


def _features(family: str) -> tuple[Row, ...]:
  """Fig. 15: every characteristic left out in turn, for both CAAT methods."""
  out = []
  for kind, short, label in (("meta", "meta-caat", "Meta-CAAT"),
                             ("reinforce", "reinforce-caat", "Reinforce-CAAT")):
    config = FAMILIES[family][kind]
    method = ROW_DEFINITIONS[short + "-grad" if kind == "meta" else short][2][0]
    out.append(Row(f"{short}-all", f"{label}, all six", config, (method,)))
    for i, feature in enumerate(FEATURES):
      mask = tuple(int(j != i) for j in range(len(FEATURES)))
      out.append(Row(f"{short}-no-{feature.replace(' ', '-')}", f"{label}, without {feature}",
                     config, (method, f"caat.feature_mask={mask}")))
  return tuple(out)


def _pair(name: str, title: str, table: str | None, family: str, names: Sequence[str], *,
          attacks: tuple[str, ...] = ("pgd10",), overrides: tuple[str, ...] = (),
          digits_names: Sequence[str] | None = None, note: str = "",
          custom_rows=None, digits_overrides: tuple[str, ...] | None = None,
          unavailable: str = "") -> list[Experiment]:
  """An experiment at the paper's scale and its digits counterpart."""
  full = custom_rows(family) if custom_rows else rows(family, names)
  small = custom_rows("digits") if custom_rows else rows("digits", digits_names or names)
  return [
      Experiment(name, title, full, attacks, table, overrides=overrides, note=note,
                 unavailable=unavailable),
      Experiment(f"digits_{name}", f"{title} (digits counterpart)", small, ("pgd20",), table,
                 overrides=DIGITS_SCALE + (overrides if digits_overrides is None
                                           else digits_overrides),
                 note=DIGITS_NOTE + (" Long-tailed: " + digits_overrides[-1].replace("=", " ")
                                     + ", the same 200 steps as the balanced runs."
                                     if digits_overrides else "")),
  ]


def _noise_diagnostics() -> Experiment:
  """Issue 17: why Meta-CAAT under 40% uniform noise trails TRADES (digits).

  Rows share digits_table6's settings and names: give it digits_table6's
  --workdir and the rows both have (trades-b6, meta-caat-grad) are reused.
  """
  base = rows("digits", ("trades-b6", "meta-caat-grad", "meta-caat-grad-lam6",
                         "reinforce-caat-lam6"))
  trades, meta, meta6, reinforce6 = base

  def variant(row: Row, name: str, label: str, *extra: str) -> Row:
    return Row(name, f"{row.label}: {label}", row.config, row.overrides + extra)

  diag = (
      variant(meta, "meta-caat-fixed", "fixed bound", "caat.bound=fixed"),
      variant(meta, "meta-caat-grad-clean-point", "grad bound at the clean point",
              "caat.grad_bound_point=clean"),
      variant(meta, "meta-caat-grad-anti0", "anti-adversary bound 0 (plain CE)",
              "caat.anti_bound_scale=0.0"),
      variant(meta, "meta-caat-grad-anti0.25", "anti-adversary bound x 0.25",
              "caat.anti_bound_scale=0.25"),
      variant(meta, "meta-caat-grad-anti0.5", "anti-adversary bound x 0.5",
              "caat.anti_bound_scale=0.5"),
      variant(meta, "meta-caat-grad-anticap1", "anti-adversary bound capped at eps",
              "caat.anti_bound_cap=1.0"),
      variant(meta, "meta-caat-grad-hard", "hard weights (straight-through)",
              "caat.weights=hard"),
      variant(meta, "meta-caat-grad-clean-ce", "meta objective clean CE",
              "meta.objective=clean_ce"),
      variant(meta, "meta-caat-grad-official", "meta objective official",
              "meta.objective=official"),
      variant(trades, "oracle-trades-b6", "oracle: corrupted samples dropped",
              "data.drop_corrupted=true"),
      variant(meta, "oracle-meta-caat-grad", "oracle: corrupted samples dropped",
              "data.drop_corrupted=true"),
      variant(trades, "trades-b6-normalized", "official threat model (eps x std)",
              "attack.threat_model=normalized"),
      variant(meta, "meta-caat-grad-normalized", "official threat model (eps x std)",
              "attack.threat_model=normalized"),
      # The two effects the rows above isolate, together: the KL weight
      # matched to TRADES' and no anti-adversarial step (plain CE).
      variant(meta6, "meta-caat-grad-lam6-anti0", "anti-adversary bound 0 (plain CE)",
              "caat.anti_bound_scale=0.0"),
      variant(reinforce6, "reinforce-caat-lam6-paper", "the paper's reward (Eq. 34)",
              "reinforce.reward=paper"),
      # The best fixed treatment: corrupted samples always anti-adversarial
      # (or plain CE), clean ones always adversarial, fixed bound.
      variant(meta6, "oracle-anti-lam6", "oracle: corrupted anti-adversarial, clean adversarial",
              "caat.direction=oracle"),
      variant(meta6, "oracle-ce-lam6", "oracle: corrupted plain CE, clean adversarial",
              "caat.direction=oracle", "caat.anti_bound_scale=0.0"),
  )
  return Experiment(
      "digits_noise_diagnostics", "Issue 17: Meta-CAAT under 40% uniform noise, diagnostics",
      base + diag, ("pgd20",), "table6", seeds=1,
      overrides=DIGITS_SCALE + ("data.noise_type=uniform", "data.noise_rate=0.4"),
      note=DIGITS_NOTE + " One seed per diagnostic; see docs/results/noise.md.")


def _build() -> dict[str, Experiment]:
  exps: list[Experiment] = []
  exps += _pair("table1", "Table 1: standard CIFAR-10", "table1", "cifar10", PAPER_ROWS,
                digits_names=PAPER_ROWS + MATCHED_ROWS)
  exps += _pair("table2", "Table 2: standard SVHN", "table2", "svhn", PAPER_ROWS,
                note="SVHN rows use configs/svhn.py (FRL and Meta-CAAT have no SVHN config "
                     "of their own).")
  t3 = _pair("table3", "Table 3: AutoAttack on standard CIFAR-10", "table3", "cifar10",
             NO_BASELINE_REWEIGHT, attacks=("autoattack",),
             digits_names=NO_BASELINE_REWEIGHT + MATCHED_ROWS,
             note="Run with the same --workdir as table1 to evaluate its trained models.")
  # The digits AutoAttack counterpart evaluates digits_table1's models (same
  # rows and configs): give both the same --workdir.
  t3[1] = dataclasses.replace(t3[1], attacks=("autoattack",), note=DIGITS_NOTE + (
      " AutoAttack (standard) on the first 120 test points; give it digits_table1's "
      "--workdir to evaluate those models."), eval_examples=120)
  exps += t3
  exps += _pair("table4", "Table 4: AutoAttack on ImageNet", "table4", "cifar10",
                NO_BASELINE_REWEIGHT, attacks=("autoattack",),
                unavailable="ImageNet (imagenet2012) is not one of the data sources yet "
                            "(data.name: digits, cifar10, svhn)")[:1]
  noise = ("pgd-at", "trades-b1", "trades-b6", "frl-reweight", "frl-remargin",
           "frl-reweight-remargin", "meta-caat-grad", "meta-caat-remargin", "reinforce-caat")
  exps += _pair("table5", "Table 5: CIFAR-10, 20% flip2 noise", "table5", "cifar10", noise,
                overrides=("data.noise_type=flip2", "data.noise_rate=0.2"),
                digits_names=noise + MATCHED_ROWS,
                note="The paper's '20% pair-flip' is the official code's two-class flip "
                     "(flip2, docs/method.md §10).")
  exps += _pair("table6", "Table 6: CIFAR-10, 40% uniform noise", "table6", "cifar10", noise,
                overrides=("data.noise_type=uniform", "data.noise_rate=0.4"),
                digits_names=noise + MATCHED_ROWS)
  exps += _pair("table7", "Table 7: long-tailed CIFAR-10, IF 10", "table7", "cifar10", noise,
                overrides=("data.imbalance_factor=10.0",), digits_names=noise + MATCHED_ROWS,
                digits_overrides=LONG_TAIL_DIGITS[10])
  exps += _pair("table8", "Table 8: long-tailed CIFAR-10, IF 100", "table8", "cifar10", noise,
                overrides=("data.imbalance_factor=100.0",),
                digits_overrides=LONG_TAIL_DIGITS[100])
  shared = ("Its CAAT rows are table7's (same settings and names): give it table7's "
            "--workdir and only 'without' trains.")
  t9 = _pair("table9", "Table 9: the 'Without' ablation, IF 10", "table9", "cifar10",
             ("meta-caat-grad", "meta-caat-remargin", "reinforce-caat", "without"),
             overrides=("data.imbalance_factor=10.0",), note=shared,
             digits_overrides=LONG_TAIL_DIGITS[10])
  t9[1] = dataclasses.replace(
      t9[1], note=t9[1].note + " " + shared.replace("table7", "digits_table7"))
  exps += t9
  exps += _pair("fig14", "Fig. 14: Settings I-IV of Meta-CAAT, standard CIFAR-10", None,
                "cifar10", (), custom_rows=_settings)
  exps += _pair("fig15", "Fig. 15: leaving out each training characteristic", None,
                "cifar10", (), custom_rows=_features)
  # The supplementary material's variants (Tables; numbers not in
  # the paper text available here).
  exps.append(Experiment("table1_wrn", "Table A-1: standard CIFAR-10, WRN-28-10",
                         rows("cifar10", PAPER_ROWS), ("pgd10",), None,
                         overrides=("model=wrn28_10",)))
  exps.append(Experiment("table1_pgd100", "Table A-2: standard CIFAR-10, PGD-100",
                         rows("cifar10", PAPER_ROWS), ("pgd100",), None,
                         note="Run with table1's --workdir to evaluate its trained models."))
  exps.append(Experiment("table2_pgd100", "Table A-3: standard SVHN, PGD-100",
                         rows("svhn", PAPER_ROWS), ("pgd100",), None,
                         note="Run with table2's --workdir to evaluate its trained models."))
  # Beyond the paper: the KL weight sweep at matched settings (digits).
  sweep = []
  for lam in (1.0, 2.0, 6.0):
    tag = f"{lam:g}"
    trades, meta = ROW_DEFINITIONS["trades-b6"], ROW_DEFINITIONS["meta-caat-grad"]
    sweep.append(Row(f"trades-b{tag}", f"TRADES (β = {tag})", FAMILIES["digits"]["base"],
                     (trades[2][0], f"trades.beta={lam}")))
    sweep.append(Row(f"meta-caat-grad-lam{tag}", f"Meta-CAAT (Grad-based), λ = {tag}",
                     FAMILIES["digits"]["meta"], meta[2] + (f"caat.lam={lam}",)))
  exps.append(Experiment("digits_lam_sweep", "KL weight sweep: TRADES β vs Meta-CAAT λ (digits)",
                         tuple(sweep), ("pgd20",), None, overrides=DIGITS_SCALE,
                         note=DIGITS_NOTE))
  exps.append(_noise_diagnostics())
  out = {e.name: e for e in exps}
  assert len(out) == len(exps), "duplicate experiment names"
  return out


EXPERIMENTS: dict[str, Experiment] = _build()


def get(name: str) -> Experiment:
  if name not in EXPERIMENTS:
    raise KeyError(f"no experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
  return EXPERIMENTS[name]
