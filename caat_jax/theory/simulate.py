"""Simulation: sample the paper's data, train logistic regression, count per-class errors.

Training is robust logistic regression with per-sample signed l_inf bounds r_i
(positive = adversary, negative = anti-adversary, zero = natural training). For a
linear model the inner maximisation (or minimisation) is exact, no PGD needed:

  min_{w, b} mean_i log(1 + exp(-m_i)),   m_i = y_i (<w, x_i> - b) - r_i ||w||_1,

since the worst (best) l_inf perturbation moves <w, x> by ||w||_1 |r_i| against
(towards) the label. The trained classifier's errors are counted on a fresh
sample and also computed exactly under the model, beside the exact optimum of the
0-1 robust risk (exact.py).
"""

import numpy as np
from scipy import optimize, special

from caat_jax.theory import exact, models


def train_logistic(x: np.ndarray, y: np.ndarray, radii: np.ndarray):
  """Robust logistic regression.

  Args:
    x: [n, d] inputs; y: [n] labels in {-1, +1}; radii: [n] signed l_inf bounds.

  Returns:
    (w [d], b): classifier sign(<w, x> - b).
  """
  n, d = x.shape
  yx = y[:, None] * x

  def loss_grad(v):
    w, b = v[:d], v[d]
    m = yx @ w - y * b - radii * np.abs(w).sum()
    loss = np.logaddexp(0.0, -m).mean()
    g = -special.expit(-m) / n  # dloss / dm_i
    gw = yx.T @ g - (g * radii).sum() * np.sign(w)
    gb = -(g * y).sum()
    return loss, np.append(gw, gb)

  # Start on the model's symmetry axis so the kink of ||w||_1 at 0 is never met.
  v0 = np.append(np.full(d, 1.0 / np.sqrt(d)), 0.0)
  res = optimize.minimize(
    loss_grad,
    v0,
    jac=True,
    method="L-BFGS-B",
    options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15},
  )
  return res.x[:d], float(res.x[d])


def empirical_errors(x, y, w, b, eps_eval: float) -> dict:
  """Per-class natural and robust error counts with standard errors.

  Returns:
    dict of [2] arrays (class -1, +1): 'natural_error', 'robust_error',
    'natural_se', 'robust_se', and 'count'.
  """
  margin = y * (x @ w - b)
  nat = margin <= 0
  rob = margin - eps_eval * np.abs(w).sum() <= 0
  out = {
    k: np.zeros(2) for k in ("natural_error", "robust_error", "natural_se", "robust_se", "count")
  }
  for c, label in enumerate((-1, 1)):
    sel = y == label
    k = sel.sum()
    out["count"][c] = k
    for name, err in (("natural", nat), ("robust", rob)):
      e = err[sel].mean()
      out[f"{name}_error"][c] = e
      out[f"{name}_se"][c] = np.sqrt(max(e * (1 - e), 1.0 / k) / k)
  return out


def exact_linear_errors(model: models.Model, w, b, eps_eval: float) -> dict:
  """Exact per-class errors of sign(<w, x> - b) under the model; [2] arrays."""
  w = np.asarray(w, np.float64)
  if model.case == "skew":
    if w[0] <= 0:
      raise ValueError("expected a classifier with w > 0 in the skew case")
    tau = b / w[0]
    sol = exact.errors_at(model, tau, np.zeros(2), eps_eval)
    return {"natural_error": sol.natural_error, "robust_error": sol.robust_error}
  prob = model.group_prob
  by_class = lambda e: np.array([e[0], (e[1:] * prob[1:]).sum() / prob[1:].sum()])
  g = len(prob)
  nat = exact.linear_group_error(model, w, b, np.zeros(g))
  rob = exact.linear_group_error(model, w, b, np.full(g, eps_eval))
  return {"natural_error": by_class(nat), "robust_error": by_class(rob)}


def default_regimes(model: models.Model, eps: float, rho: float) -> dict:
  """The training regimes of Figs. 3-6 (c), (d): signed radii per group, [G] each.

  natural; standard adversarial training (eps everywhere); varied bounds
  (adversaries only, rho eps on class +1 / on noisy samples); adversaries +
  anti-adversaries (class -1 anti-adversarial with eps, Cor. 2 and 4; noisy
  samples anti-adversarial with rho eps, Thm. 5; skew: class +1 anti-adversarial
  with rho eps, Cor. 7).
  """
  g = len(model.group_names)
  a = abs(rho)
  if model.case == "noise":
    varied, combined = [eps, eps, 0.0], [eps, eps, -a * eps]
  elif model.case == "skew":
    varied, combined = [eps, a * eps], [eps, -a * eps]
  else:
    varied, combined = [eps, a * eps], [-eps, a * eps]
  return {
    "natural": np.zeros(g),
    "standard AT": np.full(g, eps),
    "varied bounds": np.array(varied),
    "adv + anti-adv": np.array(combined),
  }


def simulate(
  model: models.Model,
  regimes: dict,
  n: int = 200_000,
  seed: int = 0,
  eps_eval: float = 0.0,
  n_test: int | None = None,
) -> dict:
  """Trains one classifier per regime on n samples, evaluates on a fresh sample.

  Args:
    regimes: name -> signed radii per group, [G].
    eps_eval: radius for the robust errors.

  Returns:
    name -> dict with 'w', 'b', 'radii', 'empirical' (empirical_errors on the
    test sample) and 'exact' (exact_linear_errors of the trained classifier).
  """
  rng = np.random.default_rng(seed)
  x, y, grp = model.sample(n, rng)
  xt, yt, _ = model.sample(n_test or n, rng)
  out = {}
  for name, radii in regimes.items():
    w, b = train_logistic(x, y, np.asarray(radii, np.float64)[grp])
    out[name] = {
      "w": w,
      "b": b,
      "radii": np.asarray(radii),
      "empirical": empirical_errors(xt, yt, w, b, eps_eval),
      "exact": exact_linear_errors(model, w, b, eps_eval),
      "train": (x, y),
    }
  return out


def monte_carlo_optimum(
  model: models.Model, sol: exact.Solution, eps_eval: float, n: int = 200_000, seed: int = 0
) -> dict:
  """Empirical per-class errors of the exact optimal classifier on n fresh samples."""
  x, y, _ = model.sample(n, np.random.default_rng(seed))
  w = np.full(model.d, 1.0 / np.sqrt(model.d))
  return empirical_errors(x, y, w, sol.threshold, eps_eval)
