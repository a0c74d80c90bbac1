"""The weighting net's hard weights: one direction per sample, and a
straight-through meta-gradient in every meta-gradient variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import digits_config


def _weights(weights, seed=0, n=32):
  """(fn(omega) -> [n, 2] as Meta-CAAT builds it, omega) on random features."""
  from caat_jax.methods import meta_caat  # pylint: disable=g-import-not-at-top

  config = digits_config(method="meta_caat", **{"caat.weights": weights, "caat.hidden": 8})
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, 6)) * 2.0
  y = jnp.arange(n) % 10
  net = meta_caat.weighting_net(config)
  omega = net.init(jax.random.PRNGKey(1), z)["params"]
  # centre the output bias so that about half the samples choose each direction
  alpha = net.apply({"params": omega}, z)[:, 0]
  shift = jnp.median(jnp.log(alpha) - jnp.log1p(-alpha)) + 0.01
  omega["Dense_1"]["bias"] = omega["Dense_1"]["bias"] + jnp.array([0.0, shift])
  fn = meta_caat.weights_fn(config, tuple(range(10, 20)))
  return (lambda om: fn(om, z, y, jnp.zeros(n, bool))), omega


def test_hard_weights_are_one_direction_per_sample():
  soft, omega = _weights("soft")
  hard, _ = _weights("hard")
  w, ws = np.asarray(hard(omega)), np.asarray(soft(omega))
  assert set(np.unique(w)) == {0.0, 1.0}
  np.testing.assert_array_equal(w[:, 0], (ws[:, 0] >= ws[:, 1]).astype(np.float32))
  np.testing.assert_array_equal(w[:, 1], 1.0 - w[:, 0])
  assert 0 < w[:, 0].sum() < len(w)  # both directions occur here
  assert not np.all(np.isin(ws, (0.0, 1.0)))


def _meta_problem(weights_fn, quadratic: bool):
  """A tiny look-ahead problem: W in R^5, per-sample terms
  L_ik = 0.5 ||A_ik W - b_ik||^2, meta loss <c, W> (+ 0.5 ||W||^2 if
  ``quadratic``)."""
  from caat_jax import meta  # pylint: disable=g-import-not-at-top

  n, d = 32, 5
  ka, kb, kc = jax.random.split(jax.random.PRNGKey(7), 3)
  a = jax.random.normal(ka, (n, 2, 3, d))
  b = jax.random.normal(kb, (n, 2, 3))
  c = jax.random.normal(kc, (d,))

  def per_sample_fn(w):
    r = jnp.einsum("nkjd,d->nkj", a, w) - b
    return 0.5 * jnp.sum(r**2, -1), None

  def meta_loss_fn(w):
    return c @ w + (0.5 * w @ w if quadratic else 0.0)

  return (
    meta.MetaProblem(
      weights_fn=weights_fn,
      per_sample_fn=per_sample_fn,
      lookahead_fn=meta.sgd_lookahead(0.1),
      meta_loss_fn=meta_loss_fn,
      lr=0.1,
    ),
    jnp.linspace(-1.0, 1.0, d),
    c,
    per_sample_fn,
  )


@pytest.mark.parametrize(
  "variant",
  [
    pytest.param("nested_grad", marks=pytest.mark.slow),
    "jvp",
    "first_order",
    pytest.param("k_step", marks=pytest.mark.slow),
  ],
)
def test_hard_meta_gradient_is_straight_through(variant):
  """With a meta loss linear in W, d meta / d w does not depend on w, so the
  straight-through meta-gradient of the hard weights equals the soft one,
  and both equal J_soft^T v, v_ik = -lr / n <c, grad L_ik(W)>, written out
  here. With a quadratic meta loss the hard forward weights change the
  look-ahead W_hat, and the two differ."""
  from caat_jax import meta  # pylint: disable=g-import-not-at-top

  soft, omega = _weights("soft")
  hard, _ = _weights("hard")
  from tests.helpers import config_module  # pylint: disable=g-import-not-at-top

  cfg = config_module("default").get_config().meta  # every variant's options
  cfg.variant, cfg.k = variant, 1
  fn = meta.make(cfg)
  grads = {}
  for name, wf in (("soft", soft), ("hard", hard)):
    problem, params, c, per_sample_fn = _meta_problem(wf, quadratic=False)
    grads[name] = fn(problem, omega, params)[0]
  per_term = jax.jacrev(lambda w: per_sample_fn(w)[0])(params)  # [n, 2, d]
  v = -0.1 / 32 * jnp.einsum("nkd,d->nk", per_term, c)
  _, vjp = jax.vjp(soft, omega)
  (by_hand,) = vjp(v)
  leaves = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  assert np.linalg.norm(leaves(grads["hard"])) > 1e-4
  np.testing.assert_allclose(leaves(grads["hard"]), leaves(by_hand), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(leaves(grads["soft"]), leaves(by_hand), rtol=1e-4, atol=1e-7)
  if variant == "first_order":
    return  # the meta gradient at W: the forward weights never enter it
  quad = {
    name: leaves(fn(_meta_problem(wf, quadratic=True)[0], omega, params)[0])
    for name, wf in (("soft", soft), ("hard", hard))
  }
  assert np.abs(quad["hard"] - quad["soft"]).max() > 1e-3 * np.abs(quad["soft"]).max()
