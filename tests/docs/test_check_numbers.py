"""docs/results/check_numbers.py: the docs' numbers are the committed CSVs'."""

import importlib.util
import os

import pytest

from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location(
  "check_numbers", os.path.join(ROOT, "docs", "results", "check_numbers.py")
)
check_numbers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_numbers)


def test_the_committed_docs_agree_with_the_csvs(capsys):
  assert check_numbers.main([]) == 0, capsys.readouterr().out


def test_rounding_once_from_the_csv():
  p = check_numbers.Sources.prints_as
  assert p(16.4470, "16.4") and not p(16.4470, "16.5")  # not 16.447 -> 16.45 -> 16.5
  assert p(0.7478, "0.7") and not p(0.7478, "0.8")
  assert p(2.5350, "2.53") and p(2.5350, "2.54")  # the CSV's own 4th decimal: either
  assert p(100.0, "100") and not p(99.4, "100")


def _altered(tmp_path, path, old, new):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    text = f.read()
  assert text.count(old) == 1, old
  line = text[: text.index(old)].count("\n") + 1
  out = tmp_path / os.path.basename(path)
  out.write_text(text.replace(old, new), encoding="utf-8")
  return str(out), line


@pytest.mark.parametrize(
  "path,old,new,reported",
  [
    # a mean ± std in a results table
    ("docs/results/digits.md", "| 18.70 ± 1.40 (56.4)", "| 18.71 ± 1.40 (56.4)", "18.71 ± 1.40"),
    # a lone number in a table cell (a seed-0 diagnostic)
    ("docs/results/noise.md", "| 21.73 | 88.57 |", "| 21.73 | 88.75 |", "88.75 (in table cell"),
    # a p-value of the README's headline table
    ("README.md", "21.1 ± 1.3 (p 0.094)", "21.1 ± 1.3 (p 0.049)", "p 0.049"),
    # a mean ± std in prose, rounded twice
    ("docs/results/noise.md", "23.5 ± 0.7%: still", "23.6 ± 0.7%: still", "23.6 ± 0.7"),
  ],
)
def test_an_altered_number_fails_with_file_and_line(tmp_path, capsys, path, old, new, reported):
  altered, line = _altered(tmp_path, path, old, new)
  assert check_numbers.main([altered]) == 1
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 1 and out[0].startswith(f"{os.path.relpath(altered, ROOT)}:{line}: {reported}")
