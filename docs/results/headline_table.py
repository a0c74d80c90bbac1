"""Prints README's headline table from the committed digits CSVs.

  python docs/results/headline_table.py

PGD-20 robust error, class average, mean ± sample std over the seeds each
row ran (0, 1, 2), and for every CAAT cell a paired t-test against TRADES
β = 6 over the same seeds: * marks p < 0.05.
"""

import csv
import os

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ("trades-b6", "meta-caat-grad", "meta-caat-grad-lam6", "reinforce-caat-lam6")
SETTINGS = (
  ("standard", "table1"),
  ("20% flip2 noise", "table5"),
  ("40% uniform noise", "table6"),
  ("long-tailed, IF 10", "table7"),
)


def robust(table: str) -> dict[str, tuple[float, float, str, np.ndarray]]:
  out = {}
  with open(os.path.join(HERE, "digits", table, "report.csv")) as f:
    for r in csv.DictReader(f):
      if r["attack"] == "pgd20" and r["column"] == "avg_robust" and r["row"] in ROWS:
        values = np.array([float(v) for v in r["values"].split(";")])
        out[r["row"]] = (float(r["mean"]), float(r["std"]), r["seeds"], values)
  return out


def main() -> None:
  print(
    "| setting | TRADES β = 6 | Meta-CAAT λ = 1 fixed | Meta-CAAT λ = 6 | Reinforce-CAAT λ = 6 |"
  )
  print("|---|---|---|---|---|")
  for name, table in SETTINGS:
    d = robust(table)
    ref = d["trades-b6"]
    cells = [f"{ref[0]:.1f} ± {ref[1]:.1f}"]
    for row in ROWS[1:]:
      mean, std, seeds, values = d[row]
      if seeds != ref[2]:
        raise ValueError(f"{table}: {row} ran seeds {seeds}, TRADES {ref[2]}: not paired")
      p = stats.ttest_rel(values, ref[3]).pvalue
      cells.append(f"{mean:.1f} ± {std:.1f}{'*' if p < 0.05 else ''} (p {p:.3f})")
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
