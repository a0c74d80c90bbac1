"""The paper's closed forms (Theorems 1-5), in its own symbols.

Each function returns the natural errors as printed, [class -1, class +1], plus
the threshold tau on t = <x, 1_d> / sqrt(d) implied by the proof's stationarity
condition (so the closed form can be compared with exact.solve point by point).

Signed bounds: Theorems 1 and 3 fix class -1's bound to eps and class +1's to
rho eps. Their proofs never use the sign of a bound, so they are written here for
class -1 bound r_- = rho_minus eps and class +1 bound r_+ = rho eps, any signs
with |r| < eta: rho_minus = 1 is the printed theorem, rho_minus = -1 the
anti-adversarial class -1 of Corollaries 2 and 4 (Theorems A.2, A.5, not printed in
the main text). exact.solve checks the substitution numerically.

Robust errors: the main text defers them to the supplement (Eqs. A.9, A.48),
which we do not have. `robust_error` here is derived, not quoted: the evaluation
attack of radius eps_eval moves both classes sqrt(d) eps_eval / sigma_y further
into the wrong side, so it adds that term to each natural-error argument.
"""

import numpy as np
from scipy import special

from caat_jax.theory import models

Phi = special.ndtr


def _result(nat_args, rob_shift, tau):
  nat_args = np.asarray(nat_args, np.float64)
  return {
    "natural_error": Phi(nat_args),
    "robust_error": Phi(nat_args + rob_shift),
    "threshold": float(tau),
  }


def theorem1(
  model: models.Model, eps: float, rho: float, rho_minus: float = 1.0, eps_eval: float | None = None
) -> dict:
  """Theorem 1, Eq. (5): different variances (Eq. 3), K > 1.

    B = 2 / (K^2 - 1) * sqrt(d) (eta - (r_- + r_+) / 2) / sigma, q = 2 log K / (K^2 - 1)
    R_nat(-1) = Phi(B - K sqrt(B^2 + q) - sqrt(d) r_- / sigma)
    R_nat(+1) = Phi(-K B + sqrt(B^2 + q) - sqrt(d) r_+ / (K sigma))
  (printed with r_- = eps, r_+ = rho eps).
  """
  K, s, sd = model.K, model.sigma, np.sqrt(model.d)
  if not K > 1:
    raise ValueError("Theorem 1 needs K > 1 (it divides by K^2 - 1)")
  rm, rp = rho_minus * eps, rho * eps
  B = 2.0 / (K**2 - 1) * sd * (model.eta - (rm + rp) / 2) / s
  q = 2.0 * np.log(K) / (K**2 - 1)
  root = np.sqrt(B**2 + q)
  # Standardised class -1 training margin u = (tau + sqrt(d)(eta - r_-)) / sigma.
  u = -B + K * root
  tau = s * u - sd * (model.eta - rm)
  ev = eps if eps_eval is None else eps_eval
  return _result(
    [B - K * root - sd * rm / s, -K * B + root - sd * rp / (K * s)],
    np.array([sd * ev / s, sd * ev / (K * s)]),
    tau,
  )


def theorem2(model: models.Model) -> dict:
  """Theorem 2, Eq. (8): imbalance (Eq. 6), natural training; A = sqrt(d) eta / sigma."""
  return theorem3(model, 0.0, 0.0)


def theorem3(
  model: models.Model, eps: float, rho: float, rho_minus: float = 1.0, eps_eval: float | None = None
) -> dict:
  """Theorem 3, Eq. (10): imbalance p_+ : p_- = 1 : V (Eq. 6).

  A = sqrt(d) (eta - (r_- + r_+) / 2) / sigma
  R_nat(-1) = Phi(-A - log V / (2A) - sqrt(d) r_- / sigma)
  R_nat(+1) = Phi(-A + log V / (2A) - sqrt(d) r_+ / sigma)
  """
  s, sd, lv = model.sigma, np.sqrt(model.d), np.log(model.V)
  rm, rp = rho_minus * eps, rho * eps
  A = sd * (model.eta - (rm + rp) / 2) / s
  tau = s * lv / (2 * A) + sd * (rm - rp) / 2
  ev = eps if eps_eval is None else eps_eval
  return _result(
    [-A - lv / (2 * A) - sd * rm / s, -A + lv / (2 * A) - sd * rp / s], sd * ev / s, tau
  )


def theorem4(model: models.Model) -> dict:
  """Theorem 4, Eq. (13): flipped labels (Eq. 11), natural training."""
  return theorem5(model, 0.0, 0.0)


def theorem5(model: models.Model, eps: float, rho: float, eps_eval: float | None = None) -> dict:
  """Theorem 5, Eq. (16), as printed: clean samples adversarial with eps, noisy
  samples anti-adversarial with rho * eps (rho >= 0 here, the paper's sign).

    A = sqrt(d) (eta - eps - p (rho - 1) eps / 2) / sigma,  L = log sqrt((1 + p) / (1 - p))
    R(-1) = Phi(-A + L / A - p (rho - 1) sqrt(d) eps / sigma - sqrt(d) eps / sigma)
    R(+1) = Phi(-A - L / A - sqrt(d) eps / sigma)

  Algebraically this is Theorem 3 with class +1 the majority (V = (1 - p) / (1 + p)
  in Eq. 6's parametrisation), class +1 bound eps and a single class -1 bound
  (1 - p + p rho) eps: see `theorem5_surrogate`. exact.py's model of Eq. 11 puts
  the noisy samples in class +1 instead; docs/theory.md compares the two.
  """
  s, sd, p = model.sigma, np.sqrt(model.d), model.p
  A = sd * (model.eta - eps - p * (rho - 1) * eps / 2) / s
  L = np.log(np.sqrt((1 + p) / (1 - p)))
  rm = (1 - p + p * rho) * eps
  tau = -s * L / A + sd * (rm - eps) / 2
  ev = eps if eps_eval is None else eps_eval
  return _result(
    [-A + L / A - p * (rho - 1) * sd * eps / s - sd * eps / s, -A - L / A - sd * eps / s],
    sd * ev / s,
    tau,
  )


def theorem5_surrogate(model: models.Model, eps: float, rho: float):
  """The per-class model whose exact optimum Theorem 5's formula is.

  Returns:
    (imbalance Model, signed radii [2]) for exact.group_error / exact.optimal_threshold.
  """
  p = model.p
  sur = models.Model("imbalance", d=model.d, eta=model.eta, sigma=model.sigma, V=(1 - p) / (1 + p))
  return sur, np.array([(1 - p + p * rho) * eps, eps])
