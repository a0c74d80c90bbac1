"""Analogues of Figs. 3-6 (a)-(d), one PNG per case (matplotlib, Agg backend).

(a) signed class gap R(+1) - R(-1) of the exact optimum as rho grows;
(b) where the optimal boundary can be moved (intercept sum_i x_i against rho, with
    the scopes of adversaries only and of adversaries + anti-adversaries); for the
    skew case, as Fig. 6, the class densities, perturbed densities and boundaries;
(c), (d) logistic regression trained on simulated data (d = 2; d = 1 for skew):
    natural / standard AT / varied bounds, and natural / varied bounds /
    adversaries + anti-adversaries.
"""

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be set first)
import numpy as np  # noqa: E402

from caat_jax.theory import corollaries, exact, models, simulate  # noqa: E402

_COLORS = {
  "natural": "tab:red",
  "standard AT": "tab:green",
  "varied bounds": "tab:blue",
  "adv + anti-adv": "tab:purple",
  "Bayes (natural optimum)": "black",
}


def _rho_label(model):
  if model.case == "noise":
    return r"$\rho$ (noisy samples: anti-adversarial bound $\rho\epsilon$)"
  if model.case == "skew" and model.alpha < 0:
    return r"$\rho$ (class +1: anti-adversarial bound $\rho\epsilon$)"
  return r"$\rho$ (class +1: adversarial bound $\rho\epsilon$)"


def _panel_gap(ax, model, eps):
  rhos = np.linspace(0.0, 0.98 * corollaries.rho_limit(model, eps), 60)
  runs = [("class -1 adversarial ($\\epsilon$)", 1.0)]
  if model.case in ("variance", "imbalance"):
    runs.append(("class -1 anti-adversarial ($\\epsilon$)", -1.0))
  for (label, rm), ls in zip(runs, ("-", "--")):
    c = corollaries.gap_shrinks(model, eps, rhos, rho_minus=rm)["curve"]
    ax.plot(rhos, c["natural_gap"], ls, color="tab:blue", label=f"natural, {label}")
    ax.plot(rhos, c["robust_gap"], ls, color="tab:orange", label=f"robust, {label}")
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xlabel(_rho_label(model))
  ax.set_ylabel("error gap  R(+1) - R(-1)  (fraction)")
  ax.set_title("(a) class gap of the optimal robust classifier")
  ax.legend(fontsize=7)


def _panel_scope(ax, model, eps):
  lim = corollaries.rho_limit(model, eps)
  rhos = np.linspace(-0.98 * lim, 0.98 * lim, 60)
  for rm, name in ((1.0, "class -1 bound $+\\epsilon$"), (-1.0, "class -1 bound $-\\epsilon$")):
    if model.case == "noise" and rm < 0:
      continue
    tau = [exact.solve(model, eps, r, rho_minus=rm).threshold for r in rhos]
    ax.plot(rhos, np.sqrt(model.d) * np.array(tau), label=f"optimum, {name}")
  nat = np.sqrt(model.d) * exact.natural_solution(model).threshold
  at = np.sqrt(model.d) * exact.solve(model, eps, 1.0).threshold
  ax.axhline(nat, color=_COLORS["natural"], label="natural training")
  ax.axhline(at, color=_COLORS["standard AT"], label="standard AT")
  for anti, color in ((False, "tab:blue"), (True, "tab:purple")):
    lo, hi = corollaries.boundary_scope(model, eps, anti, n=7)
    ax.axhspan(
      lo,
      hi,
      color=color,
      alpha=0.12,
      label=f"scope, {'adv + anti-adv' if anti else 'adversaries only'}: "
      f"{hi - lo:.2f} (d eta = {model.d * model.eta:g})",
    )
  ax.set_xlabel(r"$\rho$ (signed bound $\rho\epsilon$ of class +1 / noisy samples)")
  ax.set_ylabel(r"boundary intercept $\sum_i x_i$ (input units)")
  ax.set_title("(b) where the optimal boundary can be moved")
  ax.legend(fontsize=6)


def _panel_skew_density(ax, model, eps, rho):
  xs = np.linspace(-model.eta - 4 * model.sigma, model.eta + 4 * model.sigma, 400)
  dens = model.group_pdf(xs[:, None])
  ax.plot(xs, dens[:, 0], color="tab:blue", label="class -1 (training)")
  ax.plot(xs, dens[:, 1], color="tab:orange", label=f"class +1, SN(alpha={model.alpha:g})")
  sign = corollaries.skew_rho_sign(model)
  shifted = model.group_pdf(xs[:, None] + np.array([-eps, sign * abs(rho) * eps]))
  ax.plot(xs, shifted[:, 0], "--", color="tab:blue", label="class -1 perturbed")
  ax.plot(xs, shifted[:, 1], "--", color="tab:orange", label="class +1 perturbed")
  nat = exact.natural_solution(model).threshold
  rob = exact.solve(model, eps, sign * abs(rho)).threshold
  ax.axvline(nat, color=_COLORS["natural"], label=f"natural optimum x*={nat:.3f}")
  ax.axvline(
    rob, color="tab:purple", label=f"{'Cor. 6' if sign > 0 else 'Cor. 7'} optimum x={rob:.3f}"
  )
  ax.set_xlabel("x (input units)")
  ax.set_ylabel("density")
  ax.set_title("(b) densities and optimal boundaries (Fig. 6)")
  ax.legend(fontsize=6)


def _panel_sim(ax, model, sims, names, title):
  x, y = next(iter(sims.values()))["train"]
  sel = np.random.default_rng(0).choice(len(y), 600, replace=False)
  if model.d == 1:
    for label, color in ((-1, "tab:blue"), (1, "tab:orange")):
      ax.hist(
        x[y == label, 0], bins=80, density=True, alpha=0.4, color=color, label=f"class {label:+d}"
      )
    for name in names:
      w, b = sims[name]["w"], sims[name]["b"]
      ax.axvline(b / w[0], color=_COLORS[name], label=f"{name}: x={b / w[0]:.3f}")
    ax.set_xlabel("x (input units)")
    ax.set_ylabel("density")
  else:
    ax.scatter(
      x[sel, 0], x[sel, 1], c=np.where(y[sel] > 0, "tab:orange", "tab:blue"), s=4, alpha=0.5
    )
    xs = np.linspace(x[:, 0].min(), x[:, 0].max(), 2)
    for name in names:
      w, b = sims[name]["w"], sims[name]["b"]
      ax.plot(xs, (b - w[0] * xs) / w[1], color=_COLORS[name], label=name)
    bayes = exact.natural_solution(model).threshold * np.sqrt(2)
    ax.plot(xs, bayes - xs, ":", color="black", label="Bayes (natural optimum)")
    ax.set_ylim(x[:, 1].min(), x[:, 1].max())
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
  ax.set_title(title)
  ax.legend(fontsize=7)


def draw(
  model: models.Model, eps: float, rho: float, out_dir: str, n_sim: int = 4000, seed: int = 0
) -> str:
  """Draws the four panels for `model` into out_dir/theory_<case>.png; returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  fig, axes = plt.subplots(2, 2, figsize=(13, 10))
  _panel_gap(axes[0, 0], model, eps)
  if model.case == "skew":
    _panel_skew_density(axes[0, 1], model, eps, rho)
  else:
    _panel_scope(axes[0, 1], model, eps)
  sim_model = model if model.d <= 2 else dataclasses.replace(model, d=2)
  regimes = simulate.default_regimes(sim_model, eps, rho)
  sims = simulate.simulate(sim_model, regimes, n=n_sim, seed=seed, n_test=100)
  dims = f"d={sim_model.d}" + (f" (model has d={model.d})" if sim_model.d != model.d else "")
  _panel_sim(
    axes[1, 0],
    sim_model,
    sims,
    ["natural", "standard AT", "varied bounds"],
    f"(c) logistic regression, adversaries only, {dims}",
  )
  _panel_sim(
    axes[1, 1],
    sim_model,
    sims,
    ["natural", "varied bounds", "adv + anti-adv"],
    f"(d) logistic regression, adversaries + anti-adversaries, {dims}",
  )
  params = {
    "variance": f"K={model.K:g}",
    "imbalance": f"V={model.V:g}",
    "noise": f"p={model.p:g}",
    "skew": f"alpha={model.alpha:g}",
  }[model.case]
  fig.suptitle(
    f"Case '{model.case}': {params}, d={model.d}, eta={model.eta:g}, "
    f"sigma={model.sigma:g}, eps={eps:g}, rho={rho:g} (l_inf bounds)"
  )
  fig.tight_layout()
  path = os.path.join(out_dir, f"theory_{model.case}.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
