"""Fidelity metrics of a meta-gradient estimate against the exact one.

Small pure functions on numpy arrays (host side), each checked in
tests/meta_bench/test_fidelity.py against a hand computation:

* on the Omega-gradient g_hat vs the exact g*: ``cosine``,
  ``relative_error`` |g_hat - g*| / |g*| and ``effective_lr_ratio``
  <g_hat, g*> / |g*|^2 (the factor by which the estimate rescales the meta
  learning rate along the exact direction);
* on the per-sample cotangent c ([B, K], d meta / d w): ``spearman`` rank
  correlation, ``sign_agreement`` of c_adv - c_anti, ``top_overlap`` of the
  largest entries, ``auroc`` of a score for corrupted vs clean samples;
* over the keys of a stochastic variant: ``bias_and_std``.
"""

import math

import numpy as np


def _flat(x) -> np.ndarray:
  return np.asarray(x, np.float64).reshape(-1)


def cosine(a, b) -> float:
  """<a, b> / (|a| |b|); NaN when either is zero."""
  a, b = _flat(a), _flat(b)
  denom = np.linalg.norm(a) * np.linalg.norm(b)
  return float(np.dot(a, b) / denom) if denom > 0 else math.nan


def relative_error(estimate, exact) -> float:
  """|estimate - exact| / |exact| (NaN for a zero exact gradient)."""
  e, x = _flat(estimate), _flat(exact)
  n = np.linalg.norm(x)
  return float(np.linalg.norm(e - x) / n) if n > 0 else math.nan


def effective_lr_ratio(estimate, exact) -> float:
  """<estimate, exact> / |exact|^2: 1 for the exact gradient, 0.5 for half
  of it; an Adam meta step is scale free, an SGD one is not."""
  e, x = _flat(estimate), _flat(exact)
  n2 = float(np.dot(x, x))
  return float(np.dot(e, x) / n2) if n2 > 0 else math.nan


def ranks(x) -> np.ndarray:
  """1-based ranks of the entries of ``x`` (ties share their average rank)."""
  x = _flat(x)
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  r = np.empty(len(x), np.float64)
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    r[order[i : j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return r


def spearman(a, b) -> float:
  """Spearman rank correlation: Pearson's correlation of the ranks."""
  ra, rb = ranks(a), ranks(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denom = np.linalg.norm(ra) * np.linalg.norm(rb)
  return float(np.dot(ra, rb) / denom) if denom > 0 else math.nan


def direction_score(c) -> np.ndarray:
  """[B] c_adv - c_anti of a [B, 2] cotangent (its only column for [B, 1]):
  positive where raising the sample's adversarial weight against its
  anti-adversarial one raises the meta loss (the meta step leans it
  anti-adversarial)."""
  c = np.asarray(c, np.float64)
  c = c.reshape(c.shape[0], -1)
  return c[:, 0] - c[:, 1] if c.shape[1] >= 2 else c[:, 0]


def sign_agreement(estimate, exact) -> float:
  """Fraction of entries whose signs agree (zero counts as its own sign)."""
  e, x = _flat(estimate), _flat(exact)
  return float(np.mean(np.sign(e) == np.sign(x)))


def top_overlap(estimate, exact, frac: float = 0.1) -> float:
  """|top(estimate) & top(exact)| / k, top = the k = ceil(frac n) largest
  entries (the caller passes magnitudes to rank by size)."""
  e, x = _flat(estimate), _flat(exact)
  k = max(1, math.ceil(frac * len(x)))
  top = lambda v: set(np.argsort(-v, kind="mergesort")[:k].tolist())
  return len(top(e) & top(x)) / k


def auroc(scores, positive) -> float:
  """Area under the ROC curve of ``scores`` for the ``positive`` (bool)
  entries against the rest: P(score of a positive > score of a negative),
  ties counting one half (Mann-Whitney U / (n_pos n_neg)). NaN without both
  classes."""
  s = _flat(scores)
  pos = np.asarray(positive, bool).reshape(-1)
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return math.nan
  r = ranks(s)
  return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bias_and_std(samples, exact) -> tuple[float, float]:
  """Over the keys of a stochastic estimator, relative to |exact|:
  bias = |mean_j g_j - g*| / |g*| and std = sqrt(sum_j |g_j - mean|^2 /
  (n - 1)) / |g*| (0 for one sample). ``samples``: [n, ...]."""
  g = np.asarray(samples, np.float64).reshape(len(samples), -1)
  x = _flat(exact)
  n = np.linalg.norm(x)
  if n == 0:
    return math.nan, math.nan
  mean = g.mean(0)
  spread = float(np.sum((g - mean) ** 2) / (len(g) - 1)) if len(g) > 1 else 0.0
  return float(np.linalg.norm(mean - x) / n), math.sqrt(spread) / float(n)


def gradient_metrics(estimate, exact) -> dict:
  """The Omega-gradient metrics of one estimate."""
  return {
    "cosine": cosine(estimate, exact),
    "rel_error": relative_error(estimate, exact),
    "eff_lr_ratio": effective_lr_ratio(estimate, exact),
  }


def cotangent_metrics(estimate, exact, corrupted=None, frac: float = 0.1) -> dict:
  """The per-sample cotangent metrics of one [B, K] estimate; ``corrupted``
  (bool [B], or None without label noise) adds the AUROC of the estimate's
  ``direction_score`` for corrupted vs clean samples."""
  out = {
    "spearman_c": spearman(estimate, exact),
    "sign_agreement": sign_agreement(direction_score(estimate), direction_score(exact)),
    "top10_overlap": top_overlap(np.abs(_flat(estimate)), np.abs(_flat(exact)), frac),
  }
  out["auroc_noisy"] = (
    auroc(direction_score(estimate), corrupted) if corrupted is not None else math.nan
  )
  return out
