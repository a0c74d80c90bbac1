"""Meta-gradient variants against independent computations (docs/method.md §5).

A tiny problem: an MLP classifier, per-sample terms [CE + lam KL, CE_at] on
fixed perturbed inputs, the WeightingNet on random features, a CE meta loss.
The reference is the meta objective J(Omega) = meta(lookahead(W, g(w(Omega))))
differentiated by central finite differences in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from caat_jax import losses, meta
from caat_jax.caat import nets
from caat_jax.meta.first_order import first_order
from caat_jax.meta.jvp import jvp
from caat_jax.meta.k_step import k_step
from caat_jax.meta.nested_grad import nested_grad

B, M, D, C, H = 6, 5, 7, 3, 9


LR = 0.3


def _problem(lookahead="sgd", tau=1.0, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 10)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  params = {
    "w1": jax.random.normal(ks[0], (D, H), dtype) / 2,
    "b1": jax.random.normal(ks[1], (H,), dtype) / 4,
    "w2": jax.random.normal(ks[2], (H, C), dtype) / 2,
  }
  f = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
  x, x_adv, x_at = (jax.random.normal(k, (B, D), dtype) for k in ks[3:6])
  y = jax.random.randint(ks[6], (B,), 0, C)
  xm, ym = jax.random.normal(ks[7], (M, D), dtype), jax.random.randint(ks[8], (M,), 0, C)
  z = jax.random.normal(ks[9], (B, 6), dtype)
  net = nets.WeightingNet(hidden=8, tau=tau)
  omega = jax.tree.map(
    lambda a: a.astype(dtype), net.init(jax.random.PRNGKey(seed + 1), z)["params"]
  )

  def per_sample_fn(p):
    lc = f(p, x)
    terms = jnp.stack(
      [
        losses.cross_entropy(lc, y) + 0.7 * losses.kl_divergence(lc, f(p, x_adv)),
        losses.cross_entropy(f(p, x_at), y),
      ],
      axis=-1,
    )
    return terms, None

  if lookahead == "sgd":
    la = meta.sgd_lookahead(LR)
  else:
    trace = jax.tree.map(lambda a: 0.1 * jnp.ones_like(a), params)
    la = meta.sgd_momentum_wd_lookahead(LR, 0.9, 5e-4, trace)
  problem = meta.MetaProblem(
    weights_fn=lambda om: net.apply({"params": om}, z),
    per_sample_fn=per_sample_fn,
    lookahead_fn=la,
    meta_loss_fn=lambda p: losses.cross_entropy(f(p, xm), ym).mean(),
    lr=LR,
    axis_name=None,
  )
  return problem, omega, params


def _objective(problem, params, omega, k=1):
  """J(Omega), written out without the variants' code."""
  w = problem.weights_fn(omega)
  p, buf = params, problem.lookahead_fn.init
  for _ in range(k):
    g = jax.grad(lambda q: jnp.mean(jnp.sum(w * problem.per_sample_fn(q)[0], -1)))(p)
    p, buf = problem.lookahead_fn.step(p, g, buf)
  return problem.meta_loss_fn(p)


def _fd_directional(fn, omega, v, h=1e-5):
  plus = jax.tree.map(lambda a, d: a + h * d, omega, v)
  minus = jax.tree.map(lambda a, d: a - h * d, omega, v)
  return (fn(plus) - fn(minus)) / (2 * h)


def _dot(a, b):
  return sum(float(jnp.sum(x * y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _directions(omega, n=3):
  keys = jax.random.split(jax.random.PRNGKey(42), n)
  leaves, tree = jax.tree.flatten(omega)
  out = []
  for k in keys:
    ks = jax.random.split(k, len(leaves))
    out.append(
      jax.tree.unflatten(
        tree, [jax.random.normal(kk, l.shape, l.dtype) for kk, l in zip(ks, leaves)]
      )
    )
  return out


@pytest.mark.parametrize("lookahead", ["sgd", "sgd_momentum_wd"])
def test_nested_grad_matches_finite_differences_float64(lookahead):
  with jax.enable_x64(True):
    problem, omega, params = _problem(lookahead)
    grad, _ = nested_grad(problem, omega, params)
    assert jax.tree.leaves(grad)[0].dtype == jnp.float64
    j = functools.partial(_objective, problem, params)
    for v in _directions(omega):
      np.testing.assert_allclose(
        _dot(grad, v), float(_fd_directional(j, omega, v)), rtol=1e-6, atol=1e-12
      )


@pytest.mark.parametrize("lookahead", ["sgd", "sgd_momentum_wd"])
def test_jvp_equals_nested_grad(lookahead):
  with jax.enable_x64(True):
    problem, omega, params = _problem(lookahead)
    ref, ref_info = nested_grad(problem, omega, params)
    got, info = jvp(problem, omega, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), got, ref)
    np.testing.assert_allclose(info["meta_loss"], ref_info["meta_loss"], rtol=1e-12)
  problem, omega, params = _problem(lookahead)  # float32: to float tolerance
  ref, _ = nested_grad(problem, omega, params)
  got, _ = jvp(problem, omega, params)
  scale = max(float(jnp.abs(l).max()) for l in jax.tree.leaves(ref))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale), got, ref)


def test_k_step_one_equals_nested_grad_and_two_matches_fd():
  with jax.enable_x64(True):
    problem, omega, params = _problem()
    ref, _ = nested_grad(problem, omega, params)
    one, _ = k_step(problem, omega, params, k=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15), one, ref)
    two, _ = k_step(problem, omega, params, k=2)
    j2 = functools.partial(_objective, problem, params, k=2)
    for v in _directions(omega, 2):
      np.testing.assert_allclose(_dot(two, v), float(_fd_directional(j2, omega, v)), rtol=1e-6)
    assert abs(_dot(two, _directions(omega, 1)[0]) - _dot(ref, _directions(omega, 1)[0])) > 1e-8
    scanned, _ = k_step(problem, omega, params, k=2, scan_above=0)  # the lax.scan path
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15), scanned, two
    )


@pytest.mark.parametrize("k", [2, 3])
def test_k_step_momentum_lookahead_equals_explicit_optax_steps(k):
  """Issue 11, defect 1: a k-step look-ahead with SGD + momentum + weight
  decay updates its momentum buffer at every step, as k real optimiser steps
  (optax, coupled weight decay as the trainer's) differentiated end to end."""
  with jax.enable_x64(True):
    problem, omega, params = _problem("sgd_momentum_wd")
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(LR, momentum=0.9))

    def explicit(om):
      w = problem.weights_fn(om)
      opt = optax.tree_utils.tree_set(tx.init(params), trace=problem.lookahead_fn.init)
      p = params
      for _ in range(k):
        g = jax.grad(lambda q: jnp.mean(jnp.sum(w * problem.per_sample_fn(q)[0], -1)))(p)
        updates, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, updates)
      return problem.meta_loss_fn(p)

    ref = jax.grad(explicit)(omega)
    got, info = k_step(problem, omega, params, k=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), got, ref)
    np.testing.assert_allclose(info["meta_loss"], explicit(omega), rtol=1e-12)


def test_first_order_is_the_gradient_of_its_linearised_objective():
  """first_order differentiates J1(Omega) = meta(W) - lr <g_meta(W), g(w(Omega))>."""
  with jax.enable_x64(True):
    problem, omega, params = _problem()
    got, _ = first_order(problem, omega, params)
    g_meta = jax.grad(problem.meta_loss_fn)(params)

    def j1(om):
      w = problem.weights_fn(om)
      g = jax.grad(lambda q: jnp.mean(jnp.sum(w * problem.per_sample_fn(q)[0], -1)))(params)
      return problem.meta_loss_fn(params) - LR * _dot_traced(g_meta, g)

    for v in _directions(omega):
      np.testing.assert_allclose(_dot(got, v), float(_fd_directional(j1, omega, v)), rtol=1e-6)
    exact, _ = nested_grad(problem, omega, params)
    # an approximation, but of the right sign and size here
    v = exact
    assert 0.5 < _dot(got, v) / _dot(exact, v) < 2.0


def _dot_traced(a, b):
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_meta_gradient_alive_at_init_with_default_tau():
  """The default tau keeps the meta-gradient alive at init; the official
  tau = 0.001 saturates the softmax and (nearly) kills it."""
  norm = lambda t: float(jnp.sqrt(sum(jnp.sum(l**2) for l in jax.tree.leaves(t))))
  from configs import default  # pylint: disable=g-import-not-at-top

  tau = default.get_config().caat.tau
  problem, omega, params = _problem(tau=tau)
  alive = norm(jvp(problem, omega, params)[0])
  problem, omega, params = _problem(tau=1e-3)
  dead = norm(jvp(problem, omega, params)[0])
  assert alive > 1e-4
  assert dead < 1e-3 * alive


def test_registry():
  assert set(meta.VARIANTS) == {
    "nested_grad",
    "jvp",
    "first_order",
    "k_step",
    "layerwise",
    "neumann",
    "evograd",
  }
  with pytest.raises(ValueError, match="config.meta.variant='x'"):
    meta.get("x")
