"""Corollaries 1-7 as functions: their conditions, the class gap as rho grows, scopes.

Gap convention: gap(rho) = R(f_rob, +1) - R(f_rob, -1), signed, for natural and
robust errors (robust errors at one evaluation radius, eps_eval = eps by default).
The corollaries say the gap "decreases with the increase in rho"; `gap_curve`
reports the signed gap and `monotone` says whether the signed and the absolute
gap decrease along a rho grid (the absolute gap can only decrease until the
classes swap, see docs/theory.md).
"""

import numpy as np

from caat_jax.theory import exact, models


def exponent(model: models.Model, eps: float) -> float:
  """d (eta - eps)^2 / (2 sigma^2), the exponent in Corollaries 1-5."""
  return model.d * (model.eta - eps) ** 2 / (2.0 * model.sigma**2)


def condition(model: models.Model, eps: float) -> bool:
  """The corollary's condition for `model`'s case.

  variance (Cor. 1, 2):  K < exp(d (eta - eps)^2 / 2 sigma^2)
  imbalance (Cor. 3, 4): V < exp(d (eta - eps)^2 / 2 sigma^2)
  noise (Cor. 5):        p < (e^x - 1) / (e^x + 1), x = d (eta - eps)^2 / 2 sigma^2
  skew (Cor. 6, 7):      alpha != 0 (Cor. 6 takes alpha > 0 with adversarial rho,
                         Cor. 7 alpha < 0 with anti-adversarial rho: `skew_rho_sign`).
  """
  x = exponent(model, eps)
  if model.case == "variance":
    return model.K < np.exp(x)
  if model.case == "imbalance":
    return model.V < np.exp(x)
  if model.case == "noise":
    return model.p < np.tanh(x / 2)  # (e^x - 1) / (e^x + 1)
  return model.alpha != 0


def skew_rho_sign(model: models.Model) -> float:
  """+1 (adversarial class +1, Cor. 6) for alpha > 0; -1 (anti-adversarial, Cor. 7) else."""
  return 1.0 if model.alpha > 0 else -1.0


def rho_limit(model: models.Model, eps: float) -> float:
  """Bounds are allowed in (-eta / eps, eta / eps): |rho eps| < eta keeps w = 1_d optimal."""
  return np.inf if eps == 0 else model.eta / eps


def gap_curve(
  model: models.Model, eps: float, rhos, rho_minus: float = 1.0, eps_eval: float | None = None
) -> dict:
  """Signed class gaps of the exact optimum along rhos.

  For the noise case rho is the noisy samples' signed multiplier (negative =
  anti-adversarial, Theorem 5); clean samples keep eps.

  Returns:
    dict of arrays [len(rhos)]: 'rho', 'natural_gap', 'robust_gap', 'threshold'.
  """
  sols = [exact.solve(model, eps, r, rho_minus=rho_minus, eps_eval=eps_eval) for r in rhos]
  return {
    "rho": np.asarray(rhos, np.float64),
    "natural_gap": np.array([s.natural_error[1] - s.natural_error[0] for s in sols]),
    "robust_gap": np.array([s.robust_error[1] - s.robust_error[0] for s in sols]),
    "threshold": np.array([s.threshold for s in sols]),
  }


def monotone(values: np.ndarray, increasing: bool = False, tol: float = 1e-13) -> bool:
  """True when `values` is non-increasing (or non-decreasing) along its grid."""
  step = np.diff(values)
  return bool(np.all(step >= -tol) if increasing else np.all(step <= tol))


def gap_shrinks(model: models.Model, eps: float, rhos, rho_minus: float = 1.0) -> dict:
  """Does the gap shrink as rho grows, as the corollary claims?

  rhos are the corollary's (non-negative) rho. Its bound is adversarial on class
  +1 for the variance and imbalance cases (Cor. 1-4) and for skew with alpha > 0
  (Cor. 6); anti-adversarial on noisy samples (Cor. 5) and on class +1 for skew
  with alpha < 0 (Cor. 7): there rho is negated into our signed multiplier.
  A growing adversarial bound on class +1 lowers R(+1) and raises R(-1), so the
  signed gap R(+1) - R(-1) should fall; a growing anti-adversarial bound on +1
  samples moves the boundary the other way, so it should rise.

  Returns:
    dict with 'signed' (natural and robust signed gaps move monotonically in the
    direction above over the whole grid), 'absolute' (|gap| non-increasing over
    the whole grid), 'absolute_to_swap' (|gap| non-increasing up to the first sign
    change, if any), 'swap' (that rho, nan if none) and the 'curve'.
  """
  rhos = np.asarray(rhos, np.float64)
  anti = model.case == "noise" or (model.case == "skew" and model.alpha < 0)
  curve = gap_curve(model, eps, -rhos if anti else rhos, rho_minus=rho_minus)
  curve["rho"] = rhos
  nat, rob = curve["natural_gap"], curve["robust_gap"]
  signed = all(monotone(g, increasing=anti) for g in (nat, rob))
  absolute = all(monotone(np.abs(g)) for g in (nat, rob))
  swap = min(swap_rho(curve, "natural_gap"), swap_rho(curve, "robust_gap"))
  keep = rhos <= swap if np.isfinite(swap) else np.ones_like(rhos, bool)
  to_swap = all(monotone(np.abs(g[keep])) for g in (nat, rob))
  return {
    "signed": signed,
    "absolute": absolute,
    "absolute_to_swap": to_swap,
    "swap": swap,
    "curve": curve,
  }


def swap_rho(curve: dict, key: str = "natural_gap") -> float:
  """The first rho on the grid where the signed gap changes sign (inf if none)."""
  g = curve[key]
  idx = np.nonzero(np.sign(g[1:]) != np.sign(g[:-1]))[0]
  if not len(idx):
    return float("inf")
  i = idx[0]
  r = curve["rho"]
  return float(r[i] - g[i] * (r[i + 1] - r[i]) / (g[i + 1] - g[i]))


def intercept(model: models.Model, radii) -> float:
  """sum_i x_i on the optimal boundary (sqrt(d) tau), for signed group radii."""
  return float(np.sqrt(model.d) * exact.optimal_threshold(model, np.asarray(radii)))


def boundary_scope(
  model: models.Model, eps: float, anti: bool, n: int = 21, shrink: float = 0.99
) -> tuple[float, float]:
  """Range of the optimal boundary's intercept sum_i x_i over a family of bounds.

  Every group's multiplier ranges over [0, shrink * eta / eps] (adversaries only,
  Corollaries 1, 3) or [-shrink * eta / eps, shrink * eta / eps] (adversaries and
  anti-adversaries, Corollaries 2, 4, 5), on an n-point grid per group. The paper
  states widths d eta and 2 d eta (exact for K = V = 1, p = 0).

  Returns:
    (lowest, highest) intercept.
  """
  lim = shrink * model.eta / eps
  grid = np.linspace(-lim if anti else 0.0, lim, n)
  mesh = np.stack(np.meshgrid(*([grid] * len(model.group_names)), indexing="ij"), -1)
  vals = [intercept(model, eps * m) for m in mesh.reshape(-1, mesh.shape[-1])]
  return float(min(vals)), float(max(vals))
