"""Paired comparison of two rows over the seeds both ran: the mean
difference (row minus reference), its 95% confidence interval (Student t
with n - 1 degrees of freedom) and the two-sided paired t-test's p-value.

Seeds pair because a seed fixes the data order, the initialisation and (for
label noise and long tails) the corrupted labels and the kept examples: two
rows of one seed saw the same data. Only the seeds both rows ran are paired;
``n`` says how many.
"""

import math
from collections.abc import Mapping

from scipy import stats


def paired(row: Mapping[int, float], reference: Mapping[int, float]) -> dict:
  """{n, seeds, diff, ci_low, ci_high, p} over the common seeds of two
  {seed: value} maps; with n < 2 (or no spread in the differences) the
  interval and p are NaN."""
  seeds = sorted(set(row) & set(reference))
  n = len(seeds)
  nan = float("nan")
  out = dict(n=n, seeds=seeds, diff=nan, ci_low=nan, ci_high=nan, p=nan)
  if n == 0:
    return out
  d = [row[s] - reference[s] for s in seeds]
  mean = sum(d) / n
  out["diff"] = mean
  if n < 2:
    return out
  sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
  if sd == 0.0:
    return out
  half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
  t = mean / (sd / math.sqrt(n))
  out.update(ci_low=mean - half, ci_high=mean + half, p=float(2 * stats.t.sf(abs(t), n - 1)))
  return out


def cell(c: Mapping) -> str:
  """'+1.23 [-0.51, 2.97], p 0.120 (n 3)' or '–'."""
  if c["n"] == 0 or math.isnan(c["diff"]):
    return "–"
  if math.isnan(c["p"]):
    return f"{c['diff']:+.2f} (n {c['n']})"
  return f"{c['diff']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}], p {c['p']:.3f} (n {c['n']})"
