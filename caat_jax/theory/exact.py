"""Exact optimal robust linear classifiers by direct minimisation of the robust risk.

Threat model: l_inf perturbations, the one under which the paper's formulas hold
(their sqrt(d) eps / sigma shifts are eps ||w||_1 / ||w||_2 for w = 1_d; an l_2
ball would give eps / sigma).

Signed bounds. Group g (see models.py) is perturbed with a signed radius r_g:
r_g > 0 is an adversary (||delta||_inf <= r_g, worst case), r_g < 0 an
anti-adversary (||delta||_inf <= |r_g|, best case for the true label). For a linear
classifier f(x) = sign(<w, x> - b) both have a closed form: the perturbed margin is
y (<w, x> - b) - r_g ||w||_1. The training objective (Eqs. 4, 7, 15) is the
population-weighted error under these perturbations,

  R(w, b) = sum_g P(g) P(y_g (<w, x> - b) - r_g ||w||_1 <= 0 | g).           (*)

(Eq. 15 prints a sum of conditional errors over clean and noisy samples; only
population weighting reproduces Theorem 4/5's log((1+p)/(1-p)) terms, so that is
what is minimised here.)

Direction. For w >= 0 (replacing w by |w| never lowers any group's margin since
eta > 0), each group's standardised margin is ((eta - r_g) ||w||_1 +- b) /
(sigma_g ||w||_2); when every |r_g| < eta the coefficient eta - r_g is positive, so
all margins grow with ||w||_1 / ||w||_2, maximal at w = 1_d. The optimum is
therefore a threshold tau on t = <x, 1_d> / sqrt(d): predict +1 iff t > tau.
`solve` finds tau exactly (root of dR/dtau bracketed on a fine grid); `brute_force_2d`
searches (angle, offset) for d = 2 without assuming the direction.
"""

import dataclasses

import numpy as np
from scipy import optimize, special

from caat_jax.theory import models


@dataclasses.dataclass(frozen=True)
class Solution:
  """Optimal robust linear classifier and its per-class errors.

  Attributes:
    threshold: tau; predict +1 iff <x, 1_d> / sqrt(d) > tau. In input space the
      boundary is sum_i x_i = sqrt(d) tau (the "intercept" of Figs. 3-5 (b)).
    natural_error: [2] P(f(x) != y | y) for y = -1, +1.
    robust_error: [2] P(exists ||delta||_inf <= eps_eval: f(x + delta) != y | y)
      (Sec. 3.1's definition, one common evaluation radius for both classes).
    boundary_error: [2] robust_error - natural_error.
    train_error: [G] per-group error under its own signed training bound.
    risk: the minimised objective (*).
  """

  threshold: float
  natural_error: np.ndarray
  robust_error: np.ndarray
  boundary_error: np.ndarray
  train_error: np.ndarray
  risk: float

  def as_dict(self) -> dict:
    return {
      "natural_error": self.natural_error.tolist(),
      "robust_error": self.robust_error.tolist(),
      "boundary_error": self.boundary_error.tolist(),
      "threshold": float(self.threshold),
    }


def group_bounds(
  model: models.Model, eps: float, rho: float, rho_minus: float = 1.0, rho_clean: float = 1.0
) -> np.ndarray:
  """Signed radii per group, [G], from the paper's (eps, rho) parametrisation.

  variance / imbalance / skew: class -1 gets rho_minus * eps, class +1 rho * eps
  (Theorems 1, 3, Corollaries 6-7; rho_minus = -1 gives Corollaries 2 and 4).
  noise: clean samples of both classes get rho_clean * eps, noisy samples rho * eps,
  so Theorem 5's "noisy samples anti-adversarial with bound rho eps" is rho < 0 here.
  """
  if model.case == "noise":
    return np.array([rho_clean, rho_clean, rho]) * eps
  return np.array([rho_minus, rho]) * eps


def group_error(model: models.Model, tau, radii) -> np.ndarray:
  """Per-group error of the threshold classifier; tau: [...], radii: [G] -> [..., G]."""
  tau = np.asarray(tau, np.float64)[..., None]
  shift = np.sqrt(model.d) * np.asarray(radii, np.float64)
  y = model.group_label
  # +1 errs iff t - r sqrt(d) <= tau; -1 errs iff t + r sqrt(d) >= tau.
  cdf_plus = model.group_cdf(tau + shift)
  # The survival function keeps tiny class -1 errors exact (1 - cdf would cancel).
  sf_minus = model.group_sf(tau - shift)
  return np.where(y > 0, cdf_plus, sf_minus)


def risk(model: models.Model, tau, radii) -> np.ndarray:
  """Objective (*) of the threshold classifier; tau: [...] -> [...]."""
  return (group_error(model, tau, radii) * model.group_prob).sum(-1)


def risk_slope(model: models.Model, tau, radii) -> np.ndarray:
  """dR / dtau; tau: [...] -> [...]."""
  tau = np.asarray(tau, np.float64)
  shift = np.sqrt(model.d) * np.asarray(radii, np.float64)
  y = model.group_label
  pts = tau[..., None] + np.where(y > 0, shift, -shift)
  dens = model.group_pdf(pts)
  return (np.where(y > 0, dens, -dens) * model.group_prob).sum(-1)


def optimal_threshold(model: models.Model, radii, grid: int = 8001) -> float:
  """Global minimiser of (*) over tau: fine grid, then Brent on the slope."""
  span = model.mu + 12.0 * model.group_std.max() + np.sqrt(model.d) * np.abs(radii).max()
  taus = np.linspace(-span, span, grid)
  i = int(np.argmin(risk(model, taus, radii)))
  lo, hi = taus[max(i - 1, 0)], taus[min(i + 1, grid - 1)]
  f = lambda t: float(risk_slope(model, t, radii))
  if f(lo) < 0 < f(hi):
    return optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-14)
  res = optimize.minimize_scalar(
    lambda t: float(risk(model, t, radii)),
    bounds=(lo, hi),
    method="bounded",
    options={"xatol": 1e-12},
  )
  return float(res.x)


def errors_at(model: models.Model, tau: float, radii, eps_eval: float) -> Solution:
  """Per-class errors of the threshold classifier tau (a Solution)."""
  prob = model.group_prob
  by_class = lambda e: np.array([e[0], (e[1:] * prob[1:]).sum() / prob[1:].sum()])
  nat = by_class(group_error(model, tau, np.zeros_like(prob)))
  rob = by_class(group_error(model, tau, np.full_like(prob, eps_eval)))
  train = group_error(model, tau, radii)
  return Solution(
    threshold=float(tau),
    natural_error=nat,
    robust_error=rob,
    boundary_error=rob - nat,
    train_error=train,
    risk=float((train * prob).sum()),
  )


def solve(
  model: models.Model,
  eps: float,
  rho: float = 1.0,
  rho_minus: float = 1.0,
  rho_clean: float = 1.0,
  eps_eval: float | None = None,
) -> Solution:
  """Exact optimal robust linear classifier for the (eps, rho) bounds of `group_bounds`.

  eps_eval: radius of the robust-error evaluation (defaults to eps).
  """
  radii = group_bounds(model, eps, rho, rho_minus, rho_clean)
  tau = optimal_threshold(model, radii)
  return errors_at(model, tau, radii, eps if eps_eval is None else eps_eval)


def natural_solution(model: models.Model) -> Solution:
  """The natural-training optimum (all bounds 0; Theorems 2, 4, 6)."""
  return solve(model, 0.0)


def linear_group_error(model: models.Model, w: np.ndarray, b: np.ndarray, radii) -> np.ndarray:
  """Group errors of sign(<w, x> - b) for Gaussian models; w: [..., d], b: [...] -> [..., G]."""
  if model.case == "skew":
    raise ValueError("linear_group_error covers the Gaussian cases only")
  w = np.asarray(w, np.float64)
  y, std = model.group_label, model.group_std
  mean = model.eta * w.sum(-1)[..., None] * y
  scale = np.linalg.norm(w, axis=-1)[..., None] * std
  move = np.abs(w).sum(-1)[..., None] * np.asarray(radii)
  b = np.asarray(b, np.float64)[..., None]
  plus = special.ndtr((b + move - mean) / scale)
  minus = special.ndtr((mean + move - b) / scale)
  return np.where(y > 0, plus, minus)


def brute_force_2d(model: models.Model, radii, n_angle: int = 721, n_offset: int = 1201):
  """Minimises (*) over all d = 2 linear classifiers (angle, offset), no direction assumed.

  Returns:
    (w [2], b, risk): the best unit normal, offset and risk, after a Nelder-Mead
    polish of the best grid point.
  """
  if model.d != 2:
    raise ValueError("brute_force_2d needs d = 2")
  angle = np.linspace(-np.pi, np.pi, n_angle)
  span = model.mu + 8.0 * model.group_std.max() + 2.0 * np.abs(radii).max()
  offset = np.linspace(-span, span, n_offset)
  w = np.stack([np.cos(angle), np.sin(angle)], -1)[:, None, :]
  r = (linear_group_error(model, w, offset[None, :], radii) * model.group_prob).sum(-1)
  i, j = np.unravel_index(np.argmin(r), r.shape)

  def obj(v):
    wv = np.array([np.cos(v[0]), np.sin(v[0])])
    return float((linear_group_error(model, wv, v[1], radii) * model.group_prob).sum())

  res = optimize.minimize(
    obj,
    [angle[i], offset[j]],
    method="Nelder-Mead",
    options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000},
  )
  return np.array([np.cos(res.x[0]), np.sin(res.x[0])]), float(res.x[1]), float(res.fun)
