"""``jvp`` with ``meta.fd_eps`` (the DARTS / SAMA central difference) against
the exact JVP (docs/method.md §5): error O(eps^2), exact for quadratic
per-sample losses, and eps = 0 is the exact JVP itself."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from caat_jax import meta
from caat_jax.checks import ConfigError
from caat_jax.meta.jvp import jvp, per_sample_dots
from tests.helpers import flat
from tests.meta.test_variants import _problem

pytestmark = pytest.mark.usefixtures("x64")  # tests/meta/conftest.py


def test_error_is_second_order_in_eps():
  problem, omega, params = _problem()
  exact = flat(jvp(problem, omega, params)[0])
  est = jax.jit(lambda e: jvp(problem, omega, params, fd_eps=e)[0], static_argnums=0)
  errs = [np.abs(flat(est(e)) - exact).max() for e in (0.2, 0.1, 0.05, 0.025)]
  assert errs[0] > 1e-9 * np.abs(exact).max()  # the difference is not exact here
  for e0, e1 in zip(errs, errs[1:]):
    np.testing.assert_allclose(e0 / e1, 4.0, rtol=0.1)  # halving eps quarters the error


def test_exact_for_quadratic_per_sample_losses():
  problem, omega, params = _problem()
  x = jax.random.normal(jax.random.PRNGKey(3), (6, 7))
  a = jax.random.normal(jax.random.PRNGKey(4), (6, 2))

  def quadratic(p):  # [B, 2] quadratic forms of the parameters
    h = x @ p["w1"] + p["b1"]
    return jnp.stack([jnp.sum(h**2, -1), jnp.sum((h @ p["w2"]) * a[:, :1], -1) + a[:, 1]], -1), None

  problem = dataclasses.replace(problem, per_sample_fn=quadratic)
  exact, _ = jvp(problem, omega, params)
  for e in (1e-3, 1.0, 30.0):  # even a large step: no third derivatives
    got, _ = jvp(problem, omega, params, fd_eps=e)
    np.testing.assert_allclose(flat(got), flat(exact), rtol=1e-9, atol=1e-13)
  v = jax.tree.map(lambda p: jnp.ones_like(p), params)
  np.testing.assert_allclose(
    per_sample_dots(problem, params, v, fd_eps=2.0), per_sample_dots(problem, params, v), rtol=1e-10
  )


def _with(cfg, **changes):
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.update(changes)
  return cfg


def test_zero_is_the_exact_jvp_and_the_option_reaches_the_registry():
  problem, omega, params = _problem()
  ref, _ = jvp(problem, omega, params)
  cfg = ml_collections.ConfigDict({"variant": "jvp", "fd_eps": 0.0})
  got, _ = meta.make(cfg)(problem, omega, params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, ref)
  fd, _ = meta.make(_with(cfg, fd_eps=0.1))(problem, omega, params)
  assert np.abs(flat(fd) - flat(ref)).max() > 0
  with pytest.raises(ConfigError, match=r"config.meta.fd_eps=-0.1"):
    meta.validate(_with(cfg, fd_eps=-0.1))
  c = meta.Costs(lookahead=9.0, objective=27.0, jvp=6.0, second_order=18.0)
  assert meta.cost(_with(cfg, fd_eps=0.1), c) == 9 + 27 + 2 * 3
