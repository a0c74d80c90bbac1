"""Checks that the numbers the docs quote are the committed results.

  python docs/results/check_numbers.py [FILE ...]   (default: README.md,
      docs/experiments.md and docs/results/*.md; exit 1 on a mismatch)

Sources: every ``docs/results/digits/<experiment>/report.csv`` (the
``mean``, ``std``, per-seed ``values``, ``paper`` and paired-statistics
columns) and the paired t-test p-values between any two rows of one CSV
(same attack and column, over their common seeds), as
``docs/results/headline_table.py`` computes them.

Checked: every "a ± b" (or "a +- b") anywhere in the text, against one CSV
row whose mean and std print as a and b at the precision they are printed
with (the CSV number rounded once: 16.447 prints 16.4, not 16.5); and every
number in a Markdown table except its header row and first column (the row
label), against any CSV number printed at that precision; "p 0.094" in a
cell with "a ± b", against the paired tests of that CSV row's column with
the other rows (in other cells: of any two rows). A table whose numbers
come from elsewhere is exempted by an HTML comment above it naming why:
``<!-- check_numbers: skip (per-class numbers: figures/class_errors.csv) -->``.
Each mismatch is printed as ``file:line: number (context)``.
"""

import csv
import glob
import itertools
import os
import re
import sys
import warnings
from collections.abc import Iterable

from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_FILES = ("README.md", "docs/experiments.md", "docs/results/*.md")
NUM = r"-?\d+(?:\.\d+)?"
PM = re.compile(rf"(?<![\w.])({NUM})\s*(?:±|\+-)\s*({NUM})(?![\w.])")
P_VALUE = re.compile(rf"\bp\s*=?\s*({NUM})(?![\w.])")
NUMBER = re.compile(rf"(?<![\w.=/\-])({NUM})(?![\w.])")
SKIP = re.compile(r"<!--\s*check_numbers:\s*skip\s*\((.+)\)\s*-->")
CSV_DECIMALS = 4  # report.csv's precision
VALUE_COLUMNS = ("mean", "std", "paper", "diff", "ci_low", "ci_high", "p")


def _floats(text: str) -> list[float]:
  out = []
  for v in text.split(";"):
    try:
      out.append(float(v))
    except ValueError:
      pass
  return out


class Sources:
  """What the committed CSVs say, for lookups at a printed precision."""

  def __init__(self, csv_paths: Iterable[str]):
    self.pairs: list[tuple[float, float, tuple]] = []  # (mean, std, cell) of every CSV row
    self.numbers: list[float] = []  # every number of every CSV
    self.p_values: list[float] = []
    self.p_by_cell: dict[tuple, list[float]] = {}  # (csv, attack, column, row) -> p to others
    for path in csv_paths:
      with open(path) as f:
        rows = list(csv.DictReader(f))
      by_cell = {}
      for r in rows:
        got = {k: _floats(r.get(k) or "") for k in VALUE_COLUMNS}
        key = (path, r["attack"], r["column"], r["row"])
        if got["mean"] and got["std"]:
          self.pairs.append((got["mean"][0], got["std"][0], key))
        self.numbers += [v for vs in got.values() for v in vs] + _floats(r.get("values", ""))
        self.p_values += got["p"]
        seeds = [int(s) for s in (r.get("seeds") or "").split(";") if s]
        self.p_by_cell.setdefault(key, []).extend(got["p"])
        by_cell.setdefault((r["attack"], r["column"]), []).append(
          (key, dict(zip(seeds, _floats(r.get("values", "")))))
        )
      for cells in by_cell.values():
        for (ka, a), (kb, b) in itertools.combinations(cells, 2):
          common = sorted(set(a) & set(b))
          if len(common) >= 2:
            x, y = [a[s] for s in common], [b[s] for s in common]
            if len({u - v for u, v in zip(x, y)}) > 1:  # a spread of differences
              with warnings.catch_warnings():  # near-equal rows: p is still defined
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_rel(x, y).pvalue)
              self.p_values.append(p)
              self.p_by_cell[ka].append(p)
              self.p_by_cell[kb].append(p)

  @staticmethod
  def prints_as(value: float, text: str) -> bool:
    """``value`` (a CSV number, itself rounded to ``CSV_DECIMALS``) rounds
    to ``text`` at ``text``'s precision: |value - text| is at most half of
    text's last digit, plus the CSV's own rounding (2.5350 may be 2.53497,
    which prints 2.53; 16.4470 never prints 16.5)."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    slack = 0.5 * 10**-decimals + (0.5 * 10**-CSV_DECIMALS if decimals < CSV_DECIMALS else 0)
    return abs(value - float(text)) <= slack + 1e-12

  def cells(self, mean: str, std: str) -> list[tuple]:
    """The CSV cells whose mean and std print as ``mean ± std``."""
    return [k for m, s, k in self.pairs if self.prints_as(m, mean) and self.prints_as(s, std)]

  def pair(self, mean: str, std: str) -> bool:
    return bool(self.cells(mean, std))

  def number(self, text: str) -> bool:
    return any(self.prints_as(v, text) for v in self.numbers)

  def p_value(self, text: str, cells: list[tuple] | None = None) -> bool:
    """A p-value of a paired test of one of ``cells`` (a row's column) with
    another row of its CSV; with no cells, of any two rows."""
    pool = [p for c in cells for p in self.p_by_cell[c]] if cells else self.p_values
    return any(self.prints_as(v, text) for v in pool)


def check_text(path: str, text: str, sources: Sources) -> list[str]:
  """'file:line: number (context)' for every number the sources do not hold."""
  problems = []
  lines = text.splitlines()
  skip_table = False
  in_table = False
  in_code = False
  for i, line in enumerate(lines, 1):
    if line.lstrip().startswith("```"):
      in_code = not in_code
      continue
    if in_code:
      continue
    if SKIP.search(line):
      skip_table = True
      continue
    is_row = line.lstrip().startswith("|")
    header = is_row and not in_table
    if not is_row and in_table:  # a table ended: a skip marker covered it
      skip_table = False
    in_table = is_row
    where = f"{path}:{i}"
    rest = line
    for m in PM.finditer(line):
      if not sources.pair(m.group(1), m.group(2)):
        problems.append(f"{where}: {m.group(0)} (no CSV row's mean ± std prints so)")
    if not is_row or header or skip_table or re.fullmatch(r"\s*\|[\s|:\-]*", line):
      continue
    cells = line.strip().strip("|").split("|")[1:]  # the first column is the label
    for cell in cells:
      cell_pairs = [k for m in PM.finditer(cell) for k in sources.cells(m.group(1), m.group(2))]
      rest = PM.sub(" ", cell.replace("**", ""))
      for m in P_VALUE.finditer(rest):
        if not sources.p_value(m.group(1), cell_pairs):
          problems.append(f"{where}: p {m.group(1)} (no paired t-test of the CSVs gives it)")
      rest = P_VALUE.sub(" ", rest)
      for m in NUMBER.finditer(rest):
        if not sources.number(m.group(1)):
          problems.append(f"{where}: {m.group(1)} (in table cell '{cell.strip()}': in no CSV)")
  return problems


def main(argv: list[str]) -> int:
  files = argv or [
    p for pattern in DEFAULT_FILES for p in sorted(glob.glob(os.path.join(ROOT, pattern)))
  ]
  sources = Sources(sorted(glob.glob(os.path.join(HERE, "digits", "*", "report.csv"))))
  problems = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      problems += check_text(os.path.relpath(path, ROOT), f.read(), sources)
  for p in problems:
    print(p)
  if problems:
    print(f"{len(problems)} number(s) in the docs not in the committed results", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
