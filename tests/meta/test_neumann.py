"""``neumann`` against independent computations (docs/method.md §5): J = 0 is
``jvp``; on a strongly convex ridge problem with W at the weighted
minimiser, the series converges to the closed-form implicit hypergradient
(``jnp.linalg.solve``), its error falling geometrically in J."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import meta
from caat_jax.caat import nets
from caat_jax.checks import ConfigError
from caat_jax.meta.jvp import jvp
from caat_jax.meta.neumann import neumann
from tests.helpers import flat
from tests.meta.test_variants import _problem

B, D, LAM, LR = 12, 5, 0.5, 0.2


pytestmark = pytest.mark.usefixtures("x64")  # tests/meta/conftest.py


@pytest.mark.parametrize("lookahead", ["sgd", "sgd_momentum_wd"])
def test_zero_steps_is_jvp(lookahead):
  problem, omega, params = _problem(lookahead)
  ref, ref_info = jvp(problem, omega, params)
  got, info = neumann(problem, omega, params, steps=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-16), got, ref)
  np.testing.assert_allclose(info["meta_loss"], ref_info["meta_loss"], rtol=1e-14)
  one, _ = neumann(problem, omega, params, steps=1)  # the series adds something
  assert (
    max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(ref)))
    > 1e-6
  )


def _ridge():
  """Per-sample ridge terms on clean and perturbed inputs, weights from the
  WeightingNet, W at the weighted minimiser; returns the problem, Omega, W
  and the closed-form implicit hypergradient with H and its eigenvalues."""
  ks = jax.random.split(jax.random.PRNGKey(7), 7)
  x, xa = jax.random.normal(ks[0], (B, D)), jax.random.normal(ks[1], (B, D))
  y = jax.random.normal(ks[2], (B,))
  xm, ym = jax.random.normal(ks[3], (8, D)), jax.random.normal(ks[4], (8,))
  z = jax.random.normal(ks[5], (B, 6))
  net = nets.WeightingNet(hidden=8, tau=1.0)
  omega = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(ks[6], z)["params"])
  weights_fn = lambda om: net.apply({"params": om}, z)

  def per_sample_fn(p):
    reg = 0.5 * LAM * jnp.sum(p["w"] ** 2)
    terms = [0.5 * (inp @ p["w"] - y) ** 2 + reg for inp in (x, xa)]
    return jnp.stack(terms, axis=-1), None

  w = weights_fn(omega)  # [B, 2], positive
  hess = sum(
    jnp.einsum("i,ij,ik->jk", w[:, k], inp, inp) / B for k, inp in enumerate((x, xa))
  ) + LAM * jnp.mean(jnp.sum(w, -1)) * jnp.eye(D)
  rhs = sum(jnp.einsum("i,ij,i->j", w[:, k], inp, y) / B for k, inp in enumerate((x, xa)))
  w_star = {"w": jnp.linalg.solve(hess, rhs)}
  problem = meta.MetaProblem(
    weights_fn=weights_fn,
    per_sample_fn=per_sample_fn,
    lookahead_fn=meta.sgd_lookahead(LR),
    meta_loss_fn=lambda p: 0.5 * jnp.mean((xm @ p["w"] - ym) ** 2),
    lr=LR,
  )
  # closed form: d meta(W*(w)) / d w_ik = -(1/B) <H^-1 v, grad L_ik(W*)>
  v = jax.grad(problem.meta_loss_fn)(w_star)["w"]
  q = jnp.linalg.solve(hess, v)
  grads = [inp * (inp @ w_star["w"] - y)[:, None] + LAM * w_star["w"] for inp in (x, xa)]
  c = -jnp.stack([g @ q for g in grads], axis=-1) / B
  _, weights_vjp = jax.vjp(weights_fn, omega)
  (exact,) = weights_vjp(c)
  return problem, omega, w_star, exact, jnp.linalg.eigvalsh(hess)


def _err(a, b):
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


@pytest.mark.parametrize("alpha", [None, "1/lmax"])
def test_converges_geometrically_to_the_implicit_hypergradient(alpha):
  problem, omega, w_star, exact, eig = _ridge()
  g = problem.train_grad(w_star, problem.weights_fn(omega))["w"]
  assert float(jnp.abs(g).max()) < 1e-12  # W is the weighted minimiser
  a = LR if alpha is None else 1.0 / float(eig[-1])
  assert 0 < a < 2 / float(eig[-1])
  rate = max(abs(1 - a * float(eig[0])), abs(1 - a * float(eig[-1])))
  steps = [0, 5, 10, 20, 30]
  errs = [
    _err(neumann(problem, omega, w_star, steps=j, alpha=alpha and a)[0], exact) for j in steps
  ]
  assert errs[0] > 0.05  # J = 0 (jvp) is not the implicit gradient here
  assert errs[-1] > 1e-13  # still above rounding: the ratios below measure the series
  final = _err(neumann(problem, omega, w_star, steps=200, alpha=alpha and a)[0], exact)
  assert final < 1e-12
  for j0, j1, e0, e1 in zip(steps, steps[1:], errs, errs[1:]):
    assert e1 < e0
    assert e1 / e0 < 1.5 * rate ** (j1 - j0)  # geometric, at the predicted rate
    if j0 >= 10:  # once the slowest eigendirection dominates: at that rate, not faster
      assert e1 / e0 > 0.5 * rate ** (j1 - j0)


def test_options_validated_by_value():
  v = meta.get("neumann")
  v.validate(neumann_steps=3, neumann_alpha=0.0)
  with pytest.raises(ConfigError, match=r"config.meta.neumann_steps=-1"):
    v.validate(neumann_steps=-1, neumann_alpha=None)
  with pytest.raises(ConfigError, match=r"config.meta.neumann_alpha=-0.1"):
    v.validate(neumann_steps=1, neumann_alpha=-0.1)
  c = meta.Costs(lookahead=9.0, objective=27.0, jvp=6.0, second_order=18.0)
  assert v.cost(c, neumann_steps=0) == meta.get("jvp").cost(c)
  assert v.cost(c, neumann_steps=3) == 9 + 27 + 3 * 18 + 6
  assert v.reuses_lookahead(neumann_steps=0) and not v.reuses_lookahead(neumann_steps=2)
