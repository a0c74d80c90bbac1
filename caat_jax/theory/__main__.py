"""CLI: exact per-class errors of the optimal robust linear classifier (Section 3).

  python -m caat_jax.theory --case=variance|imbalance|noise|skew --d=.. --eta=..
      --sigma=.. --eps=.. --rho=.. [--K=..|--V=..|--p=..|--alpha=..] [--json]
      [--figures=DIR]

Bounds (l_inf, signed: negative = anti-adversarial): class -1 gets rho_minus * eps
(default 1, the theorems' eps) and class +1 rho * eps; for --case=noise clean
samples get eps and noisy samples rho * eps (Theorem 5's anti-adversarial noisy
samples are rho < 0). Bad input ends in one 'error: --flag: ...' line, exit 1.
"""

import argparse
import json
import sys

import numpy as np

from caat_jax import cli
from caat_jax.theory import closed_form, exact, models

_CASE_PARAM = {"variance": "K", "imbalance": "V", "noise": "p", "skew": "alpha"}
_PARAM_HELP = {
  "K": "variance ratio sigma_+1 / sigma_-1 >= 1 (Eq. 3)",
  "V": "imbalance p_- / p_+ >= 1 (Eq. 6)",
  "p": "flip rate 0 <= p < 1 (Eq. 11)",
  "alpha": "skew coefficient of class +1 (Eq. 17)",
}


class UsageError(Exception):
  """A bad flag: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message.replace("argument ", "", 1))


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
    prog="python -m caat_jax.theory",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--case", required=True, choices=models.CASES)
  p.add_argument("--d", type=int, default=1, help="input dimension (default 1)")
  p.add_argument("--eta", type=float, required=True, help="class mean per coordinate, > 0")
  p.add_argument("--sigma", type=float, default=1.0, help="std of class -1 (default 1)")
  p.add_argument("--eps", type=float, required=True, help="bound, 0 <= eps < eta")
  p.add_argument(
    "--rho",
    type=float,
    default=1.0,
    help="signed multiplier of class +1 (noise: noisy samples), default 1",
  )
  p.add_argument(
    "--rho_minus",
    type=float,
    default=1.0,
    help="signed multiplier of class -1 (noise: clean samples), default 1",
  )
  p.add_argument(
    "--eps_eval",
    type=float,
    default=None,
    help="radius of the robust-error evaluation (default eps)",
  )
  for name, text in _PARAM_HELP.items():
    p.add_argument(f"--{name}", type=float, default=None, help=text)
  p.add_argument("--json", action="store_true", help="print a JSON object")
  p.add_argument("--figures", default=None, metavar="DIR", help="draw Figs. 3-6 analogues")
  return p


def _check(a) -> models.Model:
  """Validates the flags (the theorems' ranges) and builds the model."""
  for name in ("eta", "sigma", "eps", "rho", "rho_minus", "eps_eval", *_PARAM_HELP):
    value = getattr(a, name)
    if value is not None and not np.isfinite(value):
      raise UsageError(f"--{name}: must be a finite number, got {value:g}")
  if a.d < 1:
    raise UsageError(f"--d: must be a positive integer, got {a.d}")
  if a.case == "skew" and a.d != 1:
    raise UsageError(f"--d: --case=skew is one-dimensional (Eq. 17), use --d=1, got {a.d}")
  if not a.eta > 0:
    raise UsageError(f"--eta: must be > 0, got {a.eta}")
  if not a.sigma > 0:
    raise UsageError(f"--sigma: must be > 0, got {a.sigma}")
  if not 0 <= a.eps < a.eta:
    raise UsageError(f"--eps: must satisfy 0 <= eps < eta = {a.eta:g}, got {a.eps:g}")
  for flag in ("rho", "rho_minus"):
    r = getattr(a, flag)
    if not abs(r * a.eps) < a.eta:  # eps > 0 here: eps = 0 bounds nothing
      lim = a.eta / a.eps
      raise UsageError(
        f"--{flag}: must satisfy -eta/eps < {flag} < eta/eps, i.e. "
        f"-{lim:g} < {flag} < {lim:g}, got {r:g}"
      )
  if a.eps_eval is not None and not 0 <= a.eps_eval:
    raise UsageError(f"--eps_eval: must be >= 0, got {a.eps_eval:g}")
  need = _CASE_PARAM[a.case]
  for name in _CASE_PARAM.values():
    if name != need and getattr(a, name) is not None:
      raise UsageError(
        f"--{name}: only applies to --case="
        f"{[c for c, v in _CASE_PARAM.items() if v == name][0]}; "
        f"--case={a.case} takes --{need}"
      )
  val = getattr(a, need)
  if val is None:
    raise UsageError(f"--{need}: --case={a.case} needs --{need}=<{_PARAM_HELP[need]}>")
  ok = {"K": val >= 1, "V": val >= 1, "p": 0 <= val < 1, "alpha": np.isfinite(val)}[need]
  if not ok:
    raise UsageError(f"--{need}: must be a {_PARAM_HELP[need]}, got {val:g}")
  return models.Model(a.case, d=a.d, eta=a.eta, sigma=a.sigma, **{need: val})


def _closed_form(model, a):
  """The paper's closed form for these flags, where the main text states one."""
  if model.case == "variance" and model.K > 1:
    return "Theorem 1", closed_form.theorem1(model, a.eps, a.rho, a.rho_minus, a.eps_eval)
  if model.case == "imbalance":
    return "Theorem 3", closed_form.theorem3(model, a.eps, a.rho, a.rho_minus, a.eps_eval)
  if model.case == "noise" and a.rho <= 0 and a.rho_minus == 1:
    return "Theorem 5", closed_form.theorem5(model, a.eps, -a.rho, a.eps_eval)
  return None, None


def main(argv=None) -> int:
  try:
    a = _parser().parse_args(argv)
    model = _check(a)
    cli.check_output_dir("figures", a.figures)  # before solving: nothing is lost
  except (UsageError, cli.OutputPathError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  sol = exact.solve(
    model, a.eps, a.rho, rho_minus=a.rho_minus, rho_clean=a.rho_minus, eps_eval=a.eps_eval
  )
  if a.json:
    print(json.dumps(sol.as_dict()))
  else:
    names = ("class -1", "class +1")
    print(
      f"case={model.case} d={model.d} eta={model.eta:g} sigma={model.sigma:g} "
      f"eps={a.eps:g} rho={a.rho:g} rho_minus={a.rho_minus:g}"
    )
    print(
      "bounds per group: "
      + ", ".join(
        f"{g}: {r:+g}"
        for g, r in zip(
          model.group_names, exact.group_bounds(model, a.eps, a.rho, a.rho_minus, a.rho_minus)
        )
      )
    )
    print(f"threshold tau = {sol.threshold:.6f}  (predict +1 iff sum_i x_i / sqrt(d) > tau)")
    for key in ("natural_error", "robust_error", "boundary_error"):
      vals = getattr(sol, key)
      print(f"{key:15s} " + "  ".join(f"{n}: {v:.6f}" for n, v in zip(names, vals)))
    which, cf = _closed_form(model, a)
    if cf is not None:
      print(
        f"{which} closed form: natural_error "
        + "  ".join(f"{n}: {v:.6f}" for n, v in zip(names, cf["natural_error"]))
        + f"  threshold {cf['threshold']:.6f}"
      )
  if a.figures:
    from caat_jax.theory import gaussian_figures as figures  # matplotlib only when asked for

    print(f"figure: {figures.draw(model, a.eps, a.rho, a.figures)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
