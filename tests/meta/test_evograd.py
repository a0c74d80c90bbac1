"""``evograd`` (Bohdal et al. 2021) against independent computations
(docs/method.md §5): for one key, its gradient is the covariance formula of
its docstring written out by hand; over many keys, its Monte-Carlo mean is
the derived small-sigma expectation s * first_order, s = sigma^2 (1 - 1/K) /
(tau lr)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import meta
from caat_jax.checks import ConfigError
from caat_jax.meta.evograd import evograd, expected_scale, perturbed_copies
from caat_jax.meta.first_order import first_order
from tests.helpers import flat
from tests.meta.test_variants import LR, _problem

pytestmark = pytest.mark.usefixtures("x64")  # tests/meta/conftest.py


def test_one_key_is_the_covariance_formula():
  """d meta / d w_ik = -(1/(tau n)) Cov_a(<v*, theta>, L_ik(theta)), with
  a = softmax(-l / tau) and v* the meta gradient at the merged W*."""
  k, sigma, tau = 3, 0.05, 0.2
  problem, omega, params = _problem()
  problem = dataclasses.replace(problem, key=jax.random.PRNGKey(5))
  est = jax.jit(
    lambda key: evograd(dataclasses.replace(problem, key=key), omega, params, k, sigma, tau)
  )
  got, info = est(problem.key)
  thetas = perturbed_copies(problem.key, params, k, sigma)
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  terms = np.stack([np.asarray(problem.per_sample_fn(t)[0]) for t in thetas])  # [k, B, 2]
  scores = (np.asarray(w)[None] * terms).sum(-1).mean(-1)
  a = np.exp(-(scores - scores.min()) / tau)
  a /= a.sum()
  merged = jax.tree.map(lambda *ts: sum(a[j] * t for j, t in enumerate(ts)), *thetas)
  v = flat(jax.grad(problem.meta_loss_fn)(merged))
  x = np.array([v @ flat(t) for t in thetas])  # <v*, theta_j>
  cov = np.einsum("j,j,jbk->bk", a, x - a @ x, terms - np.einsum("j,jbk->bk", a, terms))
  (want,) = weights_vjp(jnp.asarray(-cov / (tau * w.shape[0])))
  np.testing.assert_allclose(flat(got), flat(want), rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(info["meta_loss"], problem.meta_loss_fn(merged), rtol=1e-12)
  # a key is needed, and another key gives another estimate
  with pytest.raises(ValueError, match="MetaProblem.key"):
    evograd(dataclasses.replace(problem, key=None), omega, params)
  other, _ = est(jax.random.PRNGKey(6))
  assert np.abs(flat(other) - flat(got)).max() > 1e-6


def test_monte_carlo_mean_is_the_scaled_first_order_gradient():
  k, sigma, tau, n = 4, 1e-3, 0.05, 4000
  problem, omega, params = _problem()
  one = lambda key: evograd(dataclasses.replace(problem, key=key), omega, params, k, sigma, tau)[0]
  g = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1), n))
  samples = np.concatenate([np.asarray(l).reshape(n, -1) for l in jax.tree.leaves(g)], axis=1)
  fo = flat(first_order(problem, omega, params)[0])
  s = expected_scale(k, sigma, tau, LR)
  mean = samples.mean(0)
  cos = mean @ fo / (np.linalg.norm(mean) * np.linalg.norm(fo))
  assert cos >= 0.99
  # the component along first_order, in units of s |fo|^2: 1 within the
  # Monte-Carlo standard error (which is small enough to tell 1 - 1/K = 0.75 apart)
  proj = samples @ fo / (fo @ fo) / s
  stderr = proj.std() / np.sqrt(n)
  assert stderr < 0.06
  assert abs(proj.mean() - 1) < 4 * stderr
  np.testing.assert_allclose(np.linalg.norm(mean) / np.linalg.norm(fo), s, rtol=0.2)


def test_options_validated_by_value():
  v = meta.get("evograd")
  assert v.stochastic and not v.reuses_lookahead
  v.validate(evograd_k=2, evograd_sigma=1e-3, evograd_tau=0.05)
  with pytest.raises(ConfigError, match=r"config.meta.evograd_k=1"):
    v.validate(evograd_k=1, evograd_sigma=1e-3, evograd_tau=0.05)
  with pytest.raises(ConfigError, match=r"config.meta.evograd_sigma=0.0"):
    v.validate(evograd_k=2, evograd_sigma=0.0, evograd_tau=0.05)
  with pytest.raises(ConfigError, match=r"config.meta.evograd_tau=-1"):
    v.validate(evograd_k=2, evograd_sigma=1e-3, evograd_tau=-1)
  c = meta.Costs(lookahead=9.0, objective=27.0, jvp=6.0, second_order=18.0)
  assert v.cost(c, evograd_k=2) == 2 * 3 + 27
  np.testing.assert_allclose(expected_scale(2, 1e-3, 0.05, 0.1), 1e-4)
