"""Rows and experiments as data, and the row definitions shared by every dataset.

A ``Row`` is one line of a table: a config file (``path[:variant]``) plus
``--config.key=value`` overrides, spelled as on the command line so that
``experiments emit`` can print them unchanged. An ``Experiment`` is a table
or figure made of rows. ``rows(family, names)`` builds rows from
``ROW_DEFINITIONS`` on one dataset family's config files (``FAMILIES``);
``registry`` assembles the paper's experiments from them.
"""

import dataclasses
from collections.abc import Sequence

from caat_jax.experiments import paper
from caat_jax.experiments.select import Selection


@dataclasses.dataclass(frozen=True)
class Row:
  name: str  # directory under the experiment's workdir
  label: str  # shown in reports and figures
  config: str  # config file, relative to the repository root, with :variant
  overrides: tuple[str, ...] = ()  # "key=value", the --config.key=value spelling
  paper: str | None = None  # the paper table's row label; None: not in the paper
  # A grid the runner trains in full and picks from per seed (``select.py``);
  # None: the row is one run per seed.
  select: Selection | None = None
  note: str = ""  # what differs from the paper's row, shown under the report's table


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
  # The row the report's paired differences are taken to ("" none; the
  # report's --reference flag overrides it).
  reference: str = ""

  def row(self, name: str) -> Row:
    for r in self.rows:
      if r.name == name:
        return r
    raise KeyError(
      f"experiment {self.name!r} has no row {name!r}; rows: " + ", ".join(r.name for r in self.rows)
    )

  @property
  def paper_table(self) -> paper.Table | None:
    return paper.TABLES.get(self.table) if self.table else None


# Row specifications shared by every dataset: (label, kind of base config,
# overrides starting with the method, paper row). The family gives each kind
# its config file.
ROW_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
  "pgd-at": ("PGD-AT", "base", ("method=pgd_at",), "PGD Adv. Training"),
  "trades-b1": (
    "TRADES (1/λ = 1)",
    "base",
    ("method=trades", "trades.beta=1.0"),
    "TRADES (1/λ = 1)",
  ),
  "trades-b6": (
    "TRADES (1/λ = 6)",
    "base",
    ("method=trades", "trades.beta=6.0"),
    "TRADES (1/λ = 6)",
  ),
  "baseline-reweight": (
    "Baseline ReWeight",
    "fairness",
    ("method=frl", "fairness.mode=baseline_reweight"),
    "Baseline ReWeight",
  ),
  "frl-reweight": (
    "FRL (ReWeight)",
    "fairness",
    ("method=frl", "fairness.mode=reweight"),
    "FRL (ReWeight)",
  ),
  "frl-remargin": (
    "FRL (ReMargin)",
    "fairness",
    ("method=frl", "fairness.mode=remargin"),
    "FRL (ReMargin)",
  ),
  "frl-reweight-remargin": (
    "FRL (ReWeight+ReMargin)",
    "fairness",
    ("method=frl", "fairness.mode=reweight_remargin"),
    "FRL (ReWeight+ReMargin)",
  ),
  # λ fixed at 1 (the configs' value): not the paper's protocol, which
  # selects λ on the meta set (the "-select" rows below carry the paper's
  # numbers).
  "meta-caat-grad": (
    "Meta-CAAT (Grad-based), λ = 1 fixed",
    "meta",
    ("method=meta_caat", "caat.bound=grad"),
    None,
  ),
  "meta-caat-remargin": (
    "Meta-CAAT (ReMargin), λ = 1 fixed",
    "meta",
    ("method=meta_caat", "caat.bound=remargin", "fairness.enabled=true"),
    None,
  ),
  "reinforce-caat": ("Reinforce-CAAT", "reinforce", ("method=reinforce_caat",), "Reinforce-CAAT"),
  "without": (
    "Without (rule: head anti, tail adv)",
    "meta",
    ("method=meta_caat", "caat.direction=rule", "caat.bound=fixed"),
    "Without",
  ),
  # Beyond the paper: the KL weight matched to TRADES' beta = 6 (the paper
  # compares Meta-CAAT at lam = 1 and Reinforce-CAAT at lam = 0.005-0.1
  # with TRADES at 1/lambda = 6).
  "meta-caat-grad-lam6": (
    "Meta-CAAT (Grad-based), λ = 6",
    "meta",
    ("method=meta_caat", "caat.bound=grad", "caat.lam=6.0"),
    None,
  ),
  "reinforce-caat-lam6": (
    "Reinforce-CAAT, λ = 6",
    "reinforce",
    ("method=reinforce_caat", "reinforce.lam=6.0"),
    None,
  ),
}
# The paper's protocol (Section 6.1): Meta-CAAT's λ picked from {2/3, 1,
# 1.5, 6} on the clean meta set, per seed (``select.py``). Name -> the row
# whose config and overrides it trains at each grid point, and the paper row.
LAMBDA_GRID = (2 / 3, 1.0, 1.5, 6.0)
SELECTED_ROWS: dict[str, tuple[str, str]] = {
  "meta-caat-grad-select": ("meta-caat-grad", "Meta-CAAT (Grad-based)"),
  "meta-caat-remargin-select": ("meta-caat-remargin", "Meta-CAAT (ReMargin)"),
}
SELECT_NAMES = tuple(SELECTED_ROWS)
PAPER_ROWS = (
  "pgd-at",
  "trades-b1",
  "trades-b6",
  "baseline-reweight",
  "frl-reweight",
  "frl-remargin",
  "frl-reweight-remargin",
  "meta-caat-grad",
  "meta-caat-remargin",
  "reinforce-caat",
)
MATCHED_ROWS = ("meta-caat-grad-lam6", "reinforce-caat-lam6")
# What the digits counterparts do otherwise than the paper, row by row.
_FIXED_LAM = "λ = 1 fixed; the paper selects λ on the meta set (the λ-selected row)"
_FROM_SCRATCH = "trained from scratch at TRADES' β = 6 (the paper fine-tunes a PGD-AT model)"
DIGITS_ROW_NOTES = {
  "meta-caat-grad": _FIXED_LAM,
  "meta-caat-remargin": _FIXED_LAM,
  "reinforce-caat": "λ = 0.1, the paper's SVHN value (its CIFAR-10 value: 0.005)",
  "baseline-reweight": _FROM_SCRATCH,
  "frl-reweight": _FROM_SCRATCH,
  "frl-remargin": _FROM_SCRATCH,
  "frl-reweight-remargin": _FROM_SCRATCH,
}
NO_BASELINE_REWEIGHT = tuple(r for r in PAPER_ROWS if r != "baseline-reweight")

# Base config per (dataset family, kind): "base" for PGD-AT and TRADES (and
# any kind a family has no file for), "fairness" for FRL, "meta" for
# Meta-CAAT, "reinforce" for Reinforce-CAAT.
FAMILIES: dict[str, dict[str, str]] = {
  "cifar10": {
    "base": "configs/cifar10.py",
    "fairness": "configs/cifar10_frl.py",
    "meta": "configs/cifar10_meta_caat.py",
    "reinforce": "configs/cifar10_reinforce_caat.py",
  },
  "svhn": {"base": "configs/svhn.py", "reinforce": "configs/svhn_reinforce_caat.py"},
  # Table 4. FRL rows: configs/imagenet.py with method=frl (no fine-tuning config).
  "imagenet": {
    "base": "configs/imagenet.py",
    "meta": "configs/imagenet_meta_caat.py",
    "reinforce": "configs/imagenet_reinforce_caat.py",
  },
  "digits": {
    "base": "configs/digits.py",
    "meta": "configs/digits_meta_caat.py",
    "reinforce": "configs/digits_reinforce_caat.py",
  },
}

# What the digits counterparts change, for every row: one method per run
# (the digits config's suite off) and 10 epochs instead of 30 so that the
# whole set runs in hours on two CPU cores.
DIGITS_SCALE = ("suite=()", "num_epochs=10")
DIGITS_NOTE = (
  "Digits counterpart: 8x8 grey digits, small CNN, eps 0.1 (1.6 grey levels), "
  "10 epochs (the digits configs train 30), PGD-20 evaluation on the 360 test "
  "points; the paper: CIFAR-10, PreAct-ResNet-18, eps 8/255, PGD-10. Also "
  "otherwise than the paper: a clean meta set of 10 images per class (the paper: "
  "300); FRL and Baseline ReWeight trained from scratch at TRADES' β = 6 (the "
  "paper fine-tunes a PGD-AT model); Reinforce-CAAT at λ = 0.1 (the paper's SVHN "
  "value; CIFAR-10: 0.005); 'uniform' label noise moves a label only to one of "
  "the other classes (the paper: 'a random category', which may be its own); "
  "rows marked 'λ = 1 fixed' do not run the paper's λ selection (the 'λ selected "
  "on the meta set' rows do)."
)
# The long-tailed digits sets hold 551 (IF 10) and 333 (IF 100) training
# images instead of 1,337: their epochs are scaled so that every digits run
# takes the same 200 steps of batch 64 (10 epochs of them left the tail
# classes unlearned by every method: 80 and 50 steps).
LONG_TAIL_DIGITS = {
  10: ("data.imbalance_factor=10.0", "num_epochs=25"),
  100: ("data.imbalance_factor=100.0", "num_epochs=40"),
}


def rows(
  family: str, names: Sequence[str], config_variant: dict[str, str] | None = None
) -> tuple[Row, ...]:
  """Rows ``names`` (keys of ``ROW_DEFINITIONS``) on the family's base configs;
  ``config_variant`` maps a row name to a ``:variant`` of its config."""
  out = []
  for name in names:
    selection = None
    if name in SELECTED_ROWS:
      base_name, paper_row = SELECTED_ROWS[name]
      label, kind, overrides, _ = ROW_DEFINITIONS[base_name]
      label = label.replace("λ = 1 fixed", "λ selected on the meta set")
      selection = Selection({"caat.lam": LAMBDA_GRID}, "meta_pgd20")
    else:
      label, kind, overrides, paper_row = ROW_DEFINITIONS[name]
    base = FAMILIES[family]
    config = base.get(kind, base["base"])
    if config_variant and name in config_variant:
      config += ":" + config_variant[name]
    note = DIGITS_ROW_NOTES.get(name, "") if family == "digits" else ""
    out.append(Row(name, label, config, overrides, paper_row, selection, note))
  return tuple(out)


def setting_rows(family: str) -> tuple[Row, ...]:
  """Fig. 14: Meta-CAAT's Settings I-IV (configs/meta_caat_variants.py)."""
  config = FAMILIES[family]["meta"]
  labels = (
    "I: adversaries, fixed bound",
    "II: adversaries, grad bound",
    "III: adversaries + anti, fixed bound",
    "IV: adversaries + anti, grad bound",
  )
  return tuple(
    Row(f"setting{i}", f"Setting {label}", f"{config}:setting{i}")
    for i, label in enumerate(labels, 1)
  )


FEATURES = ("loss", "margin", "gradient", "entropy", "class proportion", "class-average loss")


def feature_rows(family: str) -> tuple[Row, ...]:
  """Fig. 15: every characteristic left out in turn, for both CAAT methods."""
  out = []
  for kind, short, label in (
    ("meta", "meta-caat", "Meta-CAAT"),
    ("reinforce", "reinforce-caat", "Reinforce-CAAT"),
  ):
    config = FAMILIES[family][kind]
    method = ROW_DEFINITIONS[short + "-grad" if kind == "meta" else short][2][0]
    note = (
      "the config's fixed bound, λ = 1: 'all six' is Fig. 14's Setting III, not the "
      "paper's Meta-CAAT (Grad bound)"
      if kind == "meta"
      else (DIGITS_ROW_NOTES["reinforce-caat"] if family == "digits" else "")
    )
    out.append(Row(f"{short}-all", f"{label}, all six", config, (method,), note=note))
    for i, feature in enumerate(FEATURES):
      mask = tuple(int(j != i) for j in range(len(FEATURES)))
      out.append(
        Row(
          f"{short}-no-{feature.replace(' ', '-')}",
          f"{label}, without {feature}",
          config,
          (method, f"caat.feature_mask={mask}"),
          note=note,
        )
      )
  return tuple(out)


def paired_experiments(
  name: str,
  title: str,
  table: str | None,
  family: str,
  names: Sequence[str],
  *,
  attacks: tuple[str, ...] = ("pgd10",),
  overrides: tuple[str, ...] = (),
  digits_names: Sequence[str] | None = None,
  note: str = "",
  custom_rows=None,
  digits_overrides: tuple[str, ...] | None = None,
  unavailable: str = "",
  reference: str = "",
) -> list[Experiment]:
  """An experiment at the paper's scale and its digits counterpart."""
  full = custom_rows(family) if custom_rows else rows(family, names)
  small = custom_rows("digits") if custom_rows else rows("digits", digits_names or names)
  # Paired differences in the report: to TRADES β = 6 where the table has it.
  ref = lambda rs: reference or ("trades-b6" if any(r.name == "trades-b6" for r in rs) else "")
  return [
    Experiment(
      name,
      title,
      full,
      attacks,
      table,
      overrides=overrides,
      note=note,
      unavailable=unavailable,
      reference=ref(full),
    ),
    Experiment(
      f"digits_{name}",
      f"{title} (digits counterpart)",
      small,
      ("pgd20",),
      table,
      overrides=DIGITS_SCALE + (overrides if digits_overrides is None else digits_overrides),
      reference=ref(small),
      note=DIGITS_NOTE
      + (
        " Long-tailed: "
        + digits_overrides[-1].replace("=", " ")
        + ", the same 200 steps as the balanced runs."
        if digits_overrides
        else ""
      ),
    ),
  ]
