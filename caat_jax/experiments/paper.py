"""The paper's reported numbers, transcribed from its Tables 1-9.

Each ``Table`` holds the paper's caption, its columns (our names for them)
and one tuple per method row, in percent, exactly as printed (bold and
underline marks dropped). Error columns: ``avg_*`` / ``worst_*`` natural,
boundary and robust error (docs/method.md §9, PGD-10 for Tables 1-2 and 5-9);
``autoattack_accuracy``: robust accuracy under AutoAttack (Tables 3-4).
The supplementary Tables A-1 to A-5 (WRN-28-10, PGD-100, the other noise
settings) are not in the paper text this library was built from; the
experiments that counterpart them carry no paper numbers.
"""

import dataclasses

COLUMNS = {
  "avg_natural": "Avg. Nat.",
  "worst_natural": "Worst Nat.",
  "avg_boundary": "Avg. Bdy.",
  "worst_boundary": "Worst Bdy.",
  "avg_robust": "Avg. Rob.",
  "worst_robust": "Worst Rob.",
  "autoattack_accuracy": "AutoAttack acc.",
}


@dataclasses.dataclass(frozen=True)
class Table:
  caption: str
  columns: tuple[str, ...]
  rows: dict[str, tuple[float, ...]]

  def value(self, row: str, column: str) -> float | None:
    """The paper's number for ``row`` x ``column``, or None if not reported."""
    if row not in self.rows or column not in self.columns:
      return None
    return self.rows[row][self.columns.index(column)]


TABLES = {
  "table1": Table(
    "Average and worst-class natural, boundary, and robust errors (%) for various algorithms on "
    "standard CIFAR10.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (15.5, 33.8, 40.9, 55.9, 56.4, 82.7),
      "TRADES (1/λ = 1)": (14.6, 31.2, 43.1, 64.6, 57.7, 84.7),
      "TRADES (1/λ = 6)": (19.6, 39.1, 29.9, 49.5, 49.5, 77.6),
      "Baseline ReWeight": (19.2, 28.3, 39.2, 53.7, 58.4, 80.1),
      "FRL (ReWeight)": (16.0, 22.5, 41.6, 54.2, 57.6, 73.3),
      "FRL (ReMargin)": (16.9, 24.9, 35.0, 50.6, 51.9, 75.5),
      "FRL (ReWeight+ReMargin)": (17.0, 26.8, 35.7, 44.5, 52.7, 69.5),
      "Meta-CAAT (Grad-based)": (14.6, 23.6, 14.4, 23.3, 29.0, 48.1),
      "Meta-CAAT (ReMargin)": (13.9, 24.3, 15.4, 24.9, 29.3, 44.4),
      "Reinforce-CAAT": (13.7, 24.6, 15.1, 25.1, 28.8, 46.8),
    },
  ),
  "table2": Table(
    "Average and worst-class natural, boundary, and robust errors (%) for various algorithms on "
    "standard SVHN.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (9.4, 19.8, 37.0, 53.9, 46.4, 73.7),
      "TRADES (1/λ = 1)": (9.9, 18.6, 39.1, 60.6, 49.0, 78.3),
      "TRADES (1/λ = 6)": (10.5, 23.4, 32.5, 52.5, 43.0, 76.6),
      "Baseline ReWeight": (8.8, 17.4, 39.3, 54.7, 48.2, 72.1),
      "FRL (ReWeight)": (7.9, 13.3, 38.2, 56.4, 46.1, 69.7),
      "FRL (ReMargin)": (9.2, 17.4, 39.7, 49.6, 48.9, 67.0),
      "FRL (ReWeight+ReMargin)": (7.7, 12.8, 36.2, 51.2, 43.9, 64.0),
      "Meta-CAAT (Grad-based)": (6.3, 9.8, 27.2, 35.4, 33.5, 43.2),
      "Meta-CAAT (ReMargin)": (6.6, 10.8, 24.7, 32.3, 31.3, 43.9),
      "Reinforce-CAAT": (6.2, 9.9, 24.5, 33.7, 30.7, 44.2),
    },
  ),
  "table3": Table(
    "Robust accuracy for AutoAttack on standard CIFAR10.",
    ("autoattack_accuracy",),
    {
      "PGD Adv. Training": (44.29,),
      "TRADES (1/λ = 1)": (50.11,),
      "TRADES (1/λ = 6)": (50.73,),
      "FRL (ReWeight)": (51.34,),
      "FRL (ReMargin)": (51.66,),
      "FRL (ReWeight+ReMargin)": (52.43,),
      "Meta-CAAT (Grad-based)": (60.45,),
      "Meta-CAAT (ReMargin)": (60.76,),
      "Reinforce-CAAT": (61.54,),
    },
  ),
  "table4": Table(
    "Robust accuracy for AutoAttack on ImageNet.",
    ("autoattack_accuracy",),
    {
      "PGD Adv. Training": (37.51,),
      "TRADES (1/λ = 1)": (40.33,),
      "TRADES (1/λ = 6)": (40.18,),
      "FRL (ReWeight)": (43.05,),
      "FRL (ReMargin)": (43.12,),
      "FRL (ReWeight+ReMargin)": (43.21,),
      "Meta-CAAT (Grad-based)": (49.87,),
      "Meta-CAAT (ReMargin)": (49.21,),
      "Reinforce-CAAT": (49.69,),
    },
  ),
  "table5": Table(
    "Average and worst-class natural, boundary, and robust errors (%) for various algorithms on "
    "CIFAR10 with 20% pair-flip noise.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (15.6, 34.6, 37.1, 52.5, 52.8, 81.0),
      "TRADES (1/λ = 1)": (15.6, 36.6, 31.0, 54.2, 46.5, 61.7),
      "TRADES (1/λ = 6)": (16.4, 34.2, 21.0, 38.9, 37.4, 59.9),
      "FRL (ReWeight)": (15.3, 31.6, 36.0, 50.7, 51.4, 61.4),
      "FRL (ReMargin)": (15.2, 31.3, 36.0, 51.9, 51.1, 79.1),
      "FRL (ReWeight+ReMargin)": (15.7, 31.7, 34.3, 48.2, 50.0, 59.1),
      "Meta-CAAT (Grad-based)": (14.6, 25.2, 13.9, 24.5, 28.5, 45.4),
      "Meta-CAAT (ReMargin)": (14.7, 30.6, 14.7, 24.0, 29.4, 52.3),
      "Reinforce-CAAT": (14.9, 29.8, 15.2, 26.7, 30.1, 52.8),
    },
  ),
  "table6": Table(
    "Average and worst-class natural, boundary, and robust errors (%) for various algorithms on "
    "CIFAR10 with 40% uniform noise.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (17.8, 35.3, 32.9, 51.3, 50.7, 74.0),
      "TRADES (1/λ = 1)": (18.6, 35.3, 33.9, 56.8, 52.5, 72.1),
      "TRADES (1/λ = 6)": (23.6, 38.8, 28.7, 55.8, 52.3, 69.7),
      "FRL (ReWeight)": (15.5, 29.5, 34.8, 49.7, 50.3, 75.5),
      "FRL (ReMargin)": (15.7, 32.1, 33.3, 50.0, 49.0, 75.8),
      "FRL (ReWeight+ReMargin)": (15.9, 29.9, 33.2, 50.4, 49.1, 72.9),
      "Meta-CAAT (Grad-based)": (13.6, 28.6, 19.3, 31.3, 32.9, 57.9),
      "Meta-CAAT (ReMargin)": (14.1, 28.9, 19.8, 31.8, 33.9, 60.4),
      "Reinforce-CAAT": (15.3, 28.9, 19.4, 32.0, 34.7, 59.2),
    },
  ),
  "table7": Table(
    "Average and worst-class natural, boundary, and robust errors (%) on CIFAR10 with an "
    "imbalance factor of 10.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (20.1, 49.4, 42.8, 49.6, 62.9, 93.0),
      "TRADES (1/λ = 1)": (16.8, 40.5, 32.3, 57.7, 49.1, 75.5),
      "TRADES (1/λ = 6)": (23.6, 54.0, 23.8, 46.9, 47.4, 79.0),
      "FRL (ReWeight)": (16.9, 35.5, 38.1, 49.1, 55.0, 72.0),
      "FRL (ReMargin)": (17.5, 49.8, 35.6, 51.7, 53.1, 88.8),
      "FRL (ReWeight+ReMargin)": (17.2, 39.6, 35.1, 51.2, 52.3, 72.2),
      "Meta-CAAT (Grad-based)": (15.8, 34.3, 14.2, 24.3, 30.0, 58.6),
      "Meta-CAAT (ReMargin)": (16.2, 34.2, 13.7, 23.2, 29.9, 57.4),
      "Reinforce-CAAT": (16.3, 34.6, 15.9, 25.1, 32.2, 58.8),
    },
  ),
  "table8": Table(
    "Average and worst-class natural, boundary, and robust errors (%) for various algorithms on "
    "CIFAR10 with an imbalance factor of 100.",
    (
      "avg_natural",
      "worst_natural",
      "avg_boundary",
      "worst_boundary",
      "avg_robust",
      "worst_robust",
    ),
    {
      "PGD Adv. Training": (24.5, 74.8, 38.0, 47.5, 62.5, 96.2),
      "TRADES (1/λ = 1)": (30.8, 68.3, 29.9, 64.2, 60.7, 83.8),
      "TRADES (1/λ = 6)": (39.2, 83.2, 16.7, 34.3, 55.9, 86.1),
      "FRL (ReWeight)": (19.8, 42.6, 36.9, 50.8, 56.7, 86.9),
      "FRL (ReMargin)": (23.2, 69.6, 34.2, 43.8, 57.4, 94.3),
      "FRL (ReWeight+ReMargin)": (19.2, 48.3, 36.8, 52.5, 56.0, 89.4),
      "Meta-CAAT (Grad-based)": (18.8, 39.3, 16.8, 27.5, 35.6, 66.8),
      "Meta-CAAT (ReMargin)": (18.7, 41.5, 17.6, 25.8, 36.3, 72.9),
      "Reinforce-CAAT": (19.1, 41.2, 17.5, 27.6, 36.6, 71.5),
    },
  ),
  "table9": Table(
    "Average natural, boundary, and robust errors (%) on CIFAR10 with an imbalance factor of 10.",
    ("avg_natural", "avg_boundary", "avg_robust"),
    {
      "Meta-CAAT (Grad-based)": (15.8, 14.2, 30.0),
      "Meta-CAAT (ReMargin)": (16.2, 13.7, 29.9),
      "Reinforce-CAAT": (16.3, 15.9, 32.2),
      "Without": (20.5, 20.1, 40.6),
    },
  ),
}
