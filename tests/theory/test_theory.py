"""Section 3 theory: closed forms vs exact optimum, simulation, corollaries, CLI."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import integrate, stats

from caat_jax.theory import __main__ as cli
from caat_jax.theory import closed_form, corollaries, exact, models, simulate

TOL = 1e-5


def _grid(case, param_values, key):
  """Models x (eps, rho, rho_minus) with every |bound| < eta, incl. rho != 1 and anti signs."""
  for val, d, eta, sigma in itertools.product(param_values, (1, 2, 10), (1.0, 2.0), (0.5, 1.0)):
    model = models.Model(case, d=d, eta=eta, sigma=sigma, **{key: val})
    for frac, rho, rho_minus in itertools.product(
      (0.0, 0.25, 0.6), (0.0, 0.5, 1.0, 1.5, -1.0), (1.0, -1.0)
    ):
      eps = frac * eta
      if abs(rho * eps) < eta:
        yield model, eps, rho, rho_minus


def _assert_close(sol, cf):
  np.testing.assert_allclose(sol.natural_error, cf["natural_error"], atol=TOL, rtol=0)
  np.testing.assert_allclose(sol.robust_error, cf["robust_error"], atol=TOL, rtol=0)
  assert abs(sol.threshold - cf["threshold"]) < TOL


def test_theorem1_closed_form_equals_numerical_optimum():
  n = 0
  for model, eps, rho, rm in _grid("variance", (1.2, 2.0, 4.0), "K"):
    _assert_close(
      exact.solve(model, eps, rho, rho_minus=rm), closed_form.theorem1(model, eps, rho, rm)
    )
    n += 1
  assert n > 300


def test_theorem3_closed_form_equals_numerical_optimum():
  for model, eps, rho, rm in _grid("imbalance", (1.0, 2.0, 10.0), "V"):
    _assert_close(
      exact.solve(model, eps, rho, rho_minus=rm), closed_form.theorem3(model, eps, rho, rm)
    )


@pytest.mark.parametrize(
  "case,key,val,fn",
  [("imbalance", "V", 5.0, closed_form.theorem2), ("noise", "p", 0.3, closed_form.theorem4)],
)
def test_theorems_2_and_4_natural_training(case, key, val, fn):
  model = models.Model(case, d=3, eta=0.8, sigma=1.3, **{key: val})
  sol, cf = exact.natural_solution(model), fn(model)
  _assert_close(sol, cf)
  # Eqs. (9), (14): the minority (+1) / noisy (-1) class has the larger error.
  worse = 1 if case == "imbalance" else 0
  assert sol.natural_error[worse] > sol.natural_error[1 - worse]


def test_theorem5_closed_form_is_the_optimum_of_its_per_class_surrogate():
  for p, rho, d, frac in itertools.product(
    (0.05, 0.2, 0.5), (0.0, 0.5, 1.0, 3.0), (1, 4), (0.1, 0.3)
  ):
    model = models.Model("noise", d=d, eta=2.0, sigma=1.0, p=p)
    eps = frac * model.eta
    if (1 - p + p * rho) * eps >= model.eta:
      continue
    sur, radii = closed_form.theorem5_surrogate(model, eps, rho)
    sol = exact.errors_at(sur, exact.optimal_threshold(sur, radii), radii, eps)
    _assert_close(sol, closed_form.theorem5(model, eps, rho))


def test_theorem5_disagrees_with_per_sample_bounds_on_eq11():
  """Reported in docs/theory.md: the printed formula is not the Eq. 11 per-sample optimum."""
  model = models.Model("noise", d=2, eta=2.0, sigma=1.0, p=0.2)
  cf = closed_form.theorem5(model, 0.2, 5.0)
  sol = exact.solve(model, 0.2, -5.0)  # noisy samples anti-adversarial with 5 eps
  assert abs(sol.natural_error[0] - cf["natural_error"][0]) > 4e-4
  assert abs(sol.threshold - cf["threshold"]) > 0.05
  # Without noise both reduce to standard adversarial training.
  clean = models.Model("noise", d=2, eta=2.0, sigma=1.0, p=0.0)
  _assert_close(exact.solve(clean, 0.2, -5.0), closed_form.theorem5(clean, 0.2, 5.0))


@pytest.mark.parametrize(
  "model,radii",
  [
    (models.Model("variance", d=2, eta=1.0, K=2.5), [0.3, -0.5]),
    (models.Model("imbalance", d=2, eta=1.5, sigma=0.7, V=4.0), [-0.4, 0.9]),
    (models.Model("noise", d=2, eta=1.0, p=0.3), [0.2, 0.2, -0.6]),
  ],
)
def test_brute_force_2d_finds_no_better_direction(model, radii):
  radii = np.array(radii)
  w, b, risk = exact.brute_force_2d(model, radii)
  tau = exact.optimal_threshold(model, radii)
  best = float(exact.risk(model, tau, radii))
  assert best <= risk + 1e-9  # the projection optimum is never beaten
  assert risk <= best + 1e-7  # and the free search reaches it
  np.testing.assert_allclose(w, np.full(2, 2**-0.5), atol=2e-3)
  assert abs(b - tau) < 2e-3


def test_skew_normal_cdf_and_sampler():
  th, s, a = 1.2, 0.7, -3.0
  for x in (-1.0, 0.5, 1.2, 2.5):
    quad = integrate.quad(models.skew_pdf, -np.inf, x, args=(th, s, a))[0]
    assert abs(models.skew_cdf(x, th, s, a) - quad) < 1e-9
  z = models.skew_sample(200_000, th, s, a, np.random.default_rng(0))
  ks = stats.kstest(z, lambda v: models.skew_cdf(v, th, s, a))
  assert ks.pvalue > 1e-3


@pytest.mark.parametrize(
  "model,eps,rho,rm",
  [
    (models.Model("variance", d=2, eta=1.0, K=2.0), 0.2, 2.0, 1.0),
    (models.Model("imbalance", d=3, eta=0.7, V=3.0), 0.2, 1.5, -1.0),
    (models.Model("noise", d=2, eta=1.0, p=0.3), 0.2, -1.5, 1.0),
    (models.Model("skew", d=1, eta=1.0, alpha=-3.0), 0.2, -2.0, 1.0),
  ],
)
def test_monte_carlo_errors_of_the_optimum_within_3_se(model, eps, rho, rm):
  sol = exact.solve(model, eps, rho, rho_minus=rm)
  mc = simulate.monte_carlo_optimum(model, sol, eps, n=200_000, seed=7)
  for key in ("natural", "robust"):
    z = (mc[f"{key}_error"] - getattr(sol, f"{key}_error")) / mc[f"{key}_se"]
    assert np.all(np.abs(z) < 3), (key, z)


@pytest.mark.parametrize(
  "model,eps,rho",
  [
    (models.Model("imbalance", d=2, eta=1.0, V=3.0), 0.3, 2.0),
    (models.Model("noise", d=2, eta=1.0, p=0.3), 0.2, 1.5),
  ],
)
def test_logistic_regression_reaches_the_exact_errors(model, eps, rho):
  """Equal-variance Gaussians: robust logistic regression is well specified."""
  out = simulate.simulate(
    model, simulate.default_regimes(model, eps, rho), n=200_000, seed=1, eps_eval=eps
  )
  for name, r in out.items():
    tau = exact.optimal_threshold(model, r["radii"])
    sol = exact.errors_at(model, tau, r["radii"], eps)
    emp = r["empirical"]
    for key in ("natural", "robust"):
      z = (emp[f"{key}_error"] - getattr(sol, f"{key}_error")) / emp[f"{key}_se"]
      assert np.all(np.abs(z) < 3), (name, key, z)


def _rhos(model, eps):
  return np.linspace(0.0, 0.98 * corollaries.rho_limit(model, eps), 25)


@pytest.mark.parametrize(
  "case,key,vals", [("variance", "K", (1.1, 2.0, 5.0)), ("imbalance", "V", (1.5, 3.0, 20.0))]
)
def test_corollaries_1_to_4_gap_shrinks_where_condition_holds(case, key, vals):
  held = 0
  for val, d, eta, frac in itertools.product(vals, (1, 4), (1.0, 2.0), (0.2, 0.5)):
    model = models.Model(case, d=d, eta=eta, **{key: val})
    eps = frac * eta
    if not corollaries.condition(model, eps):
      continue
    held += 1
    for rm in (1.0, -1.0):  # Corollaries 1, 3 and (anti-adversarial class -1) 2, 4
      res = corollaries.gap_shrinks(model, eps, _rhos(model, eps), rho_minus=rm)
      assert res["signed"], (model, eps, rm)
      if rm > 0:
        assert res["absolute_to_swap"], (model, eps)
  assert held >= 8


@pytest.mark.parametrize("case,key,val", [("variance", "K", 3.0), ("imbalance", "V", 3.0)])
def test_corollary_fails_where_condition_fails(case, key, val):
  model = models.Model(case, d=1, eta=1.0, **{key: val})
  assert not corollaries.condition(model, 0.5)
  res = corollaries.gap_shrinks(model, 0.5, _rhos(model, 0.5))
  assert not res["signed"]
  gap = res["curve"]["natural_gap"]
  assert gap[-1] > gap[0] > 0  # the hard class +1 gets worse as rho grows


def test_absolute_gap_grows_after_the_classes_swap():
  """Fig. 3's parameters: |gap| decreases only until rho ~ 4.4, then grows."""
  model = models.Model("variance", d=2, eta=2.0, K=2.0)
  res = corollaries.gap_shrinks(model, 0.2, _rhos(model, 0.2))
  assert res["signed"] and not res["absolute"] and 3.5 < res["swap"] < 6.0


def test_corollary5_and_theorem6():
  model = models.Model("noise", d=2, eta=2.0, p=0.2)
  assert corollaries.condition(model, 0.2)
  assert corollaries.gap_shrinks(model, 0.2, _rhos(model, 0.2))["absolute"]
  for alpha in (-3.0, -0.5, 0.5, 3.0):
    sol = exact.natural_solution(models.Model("skew", eta=1.2, alpha=alpha))
    assert np.sign(sol.threshold) == np.sign(alpha)  # Theorem 6
    # The text's reading "alpha > 0 makes class +1 harder" does not hold here.
    assert sol.natural_error[1] < sol.natural_error[0]


def test_boundary_scope_without_imbalance_is_d_eta_and_2_d_eta():
  model = models.Model("imbalance", d=3, eta=1.5, V=1.0)
  for anti, width in ((False, 3 * 1.5), (True, 2 * 3 * 1.5)):
    lo, hi = corollaries.boundary_scope(model, 0.5, anti, n=3, shrink=0.9)
    assert abs((hi - lo) - 0.9 * width) < 1e-6


def test_cli_json_matches_library(capsys):
  argv = [
    "--case=imbalance",
    "--d=2",
    "--eta=2",
    "--sigma=1",
    "--eps=0.8",
    "--rho=1.5",
    "--V=2",
    "--json",
  ]
  assert cli.main(argv) == 0
  got = json.loads(capsys.readouterr().out)
  want = exact.solve(models.Model("imbalance", d=2, eta=2.0, V=2.0), 0.8, 1.5).as_dict()
  assert set(got) == {"natural_error", "robust_error", "boundary_error", "threshold"}
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-12)
  assert (
    cli.main(["--case=noise", "--d=2", "--eta=2", "--eps=0.2", "--rho=-1", "--p=0.2", "--json"])
    == 0
  )
  got = json.loads(capsys.readouterr().out)
  want = exact.solve(models.Model("noise", d=2, eta=2.0, p=0.2), 0.2, -1.0).as_dict()
  np.testing.assert_allclose(got["natural_error"], want["natural_error"], rtol=1e-12)


@pytest.mark.parametrize(
  "argv,flag",
  [
    (["--case=foo", "--eta=2", "--eps=0.2"], "--case"),
    (["--case=variance", "--eta=2", "--eps=0.2"], "--K"),
    (["--case=imbalance", "--eta=2", "--eps=2.5", "--V=2"], "--eps"),
    (["--case=imbalance", "--eta=2", "--eps=0.5", "--rho=-4", "--V=2"], "--rho"),
    (["--case=noise", "--eta=2", "--eps=0.5", "--p=1"], "--p"),
    (["--case=skew", "--d=2", "--eta=2", "--eps=0.5", "--alpha=1"], "--d"),
    (["--case=skew", "--eta=2", "--eps=0.5", "--alpha=1", "--V=3"], "--V"),
  ],
)
def test_cli_bad_flag_one_line(argv, flag, capsys):
  assert cli.main(argv) == 1
  cap = capsys.readouterr()
  lines = cap.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), cap.err
  assert cap.out == ""


def test_cli_subprocess_exit_code():
  r = subprocess.run(
    [sys.executable, "-m", "caat_jax.theory", "--case=variance", "--eta=2", "--eps=0.2"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == [
    "error: --K: --case=variance needs --K=<variance ratio sigma_+1 / sigma_-1 >= 1 (Eq. 3)>"
  ]


@pytest.mark.slow
def test_cli_draws_figures(tmp_path):
  assert (
    cli.main(
      ["--case=skew", "--eta=1.2", "--eps=0.2", "--rho=2", "--alpha=3", f"--figures={tmp_path}"]
    )
    == 0
  )
  assert (tmp_path / "theory_skew.png").stat().st_size > 10_000
