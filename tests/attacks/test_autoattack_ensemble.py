"""The ensemble on a model where each attack breaks points the previous ones
could not, so all four attacks of the standard ensemble contribute.

Pixel 0 of each 8x8 image marks its group (0.125, 0.375, 0.625, 0.875; eps
is too small to move it across a quarter, and the linear model gives it no
weight). Every group is classified by the same linear model, a real function
of x in every group (so the final re-classification, ``verify``, counts a
broken point as broken); the groups differ only in which input gradients
the model lets through, by what the cotangent on its logits looks like
(:func:`_gradient_gate`):

* A: every gradient. APGD-CE breaks its points.
* B: a gradient only for a cotangent that is zero on some logit. APGD-CE's,
  ``softmax - onehot``, is nonzero on all ten logits (the logits are
  moderate, nothing underflows), so APGD-CE sees a zero gradient and stays
  at its random start; APGD-T's, the targeted DLR loss's, touches at most
  five (``z_y``, ``z_t``, ``z_pi1``, ``z_pi3``, ``z_pi4``) and APGD-T breaks them.
* C: a gradient only for a cotangent that touches at most two logits.
  FAB-T differentiates ``z_t - z_y`` (cotangent ``e_t - e_y``) and gets the
  exact gradient, so for the nearest target class its first step (the
  exact minimal step, overshot by 5%) breaks them; APGD-CE and APGD-T see
  zero gradients (at a correctly classified point the targeted DLR
  cotangent touches ``z_y``, ``z_t`` and at least one of ``z_pi3``, ``z_pi4``).
* D: no gradient (``stop_gradient(x)``): only Square's random search breaks
  them.

Each group has ``N_NEAR`` points whose minimal L-inf perturbation (exact for
a linear model) lies between 0.5 and 0.85 eps: far enough from the boundary
that no random start on the eps-sphere crosses it (the starts of APGD-CE
and APGD-T, with zero gradients, are all those attacks try), near enough
that the attack built for the group can break them (FAB-T breaks all of
group C's; APGD-CE, APGD-T and Square with 1000 queries most or some of
theirs); and ``N_FAR`` points beyond
1.5 eps that nothing may break. The test checks that each attack newly
breaks points of its own group and that no earlier attack breaks any point
there; FAB-T must break every near point of group C.

Group B used to be APGD-CE-blind by scaling its logits by 10^4 (a saturated
softmax); under ``jit`` XLA's fusion of the scaled log-softmax can leave
``p_y - 1`` a rounding error (about 1e-8) instead of zero, whose sign still points
APGD-CE at the answer (adding group C's gate to the graph made APGD-CE
break 13 of those points), so the gate replaces it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caat_jax import losses
from caat_jax.attacks import autoattack, verify
from tests.helpers import keys_for

N_NEAR, N_FAR, D, K = 20, 4, 64, 10


N_PER = N_NEAR + N_FAR


MARKS = (0.125, 0.375, 0.625, 0.875)


EPS = 0.01


NEAR, FAR = (0.5, 0.85), 1.5  # minimal perturbations, in units of eps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gradient_gate(z, max_touched):
  """The identity on logits [B, K]. Backward, a row's cotangent goes through
  if it is nonzero on at most ``max_touched`` logits and is zeroed
  otherwise, so which attacks get an input gradient depends only on the
  loss they differentiate."""
  del max_touched
  return z


def _gate_fwd(z, max_touched):
  del max_touched
  return z, None


def _gate_bwd(max_touched, _, ct):
  touched = jnp.sum(ct != 0, axis=-1, keepdims=True)
  return (jnp.where(touched <= max_touched, ct, jnp.zeros_like(ct)),)


_gradient_gate.defvjp(_gate_fwd, _gate_bwd)


def _min_linf(w, b, x):
  """The linear model's smallest L-inf perturbation that changes its
  decision at each x [N, D] (the box [0, 1] does not bind here)."""
  z = (x - 0.5) @ w + b
  y = np.argmax(z, -1)
  margin = z[np.arange(len(x)), y][:, None] - z  # [N, K]
  norm = np.abs(w[:, y].T[:, :, None] - w[None]).sum(1)  # ||w_y - w_j||_1, [N, K]
  ratio = margin / np.where(norm > 0, norm, 1.0)
  ratio[np.arange(len(x)), y] = np.inf
  return ratio.min(-1)


def _problem(seed=0):
  """(f, x, y, near): the model, 4 * N_PER points grouped by MARKS, their
  labels and which of them are within reach (bool)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D, K)) * 0.3
  w[0] = 0.0  # the marker pixel carries no weight
  b = 0.05 * rng.normal(size=K)
  pool = rng.uniform(0.3, 0.7, (4000, D))
  r = _min_linf(w, b, pool) / EPS
  near = np.flatnonzero((r > NEAR[0]) & (r < NEAR[1]))[: 4 * N_NEAR].reshape(4, N_NEAR)
  far = np.flatnonzero(r > FAR)[: 4 * N_FAR].reshape(4, N_FAR)
  assert near.size == 4 * N_NEAR and far.size == 4 * N_FAR
  x = pool[np.concatenate([near, far], 1).ravel()]
  x[:, 0] = np.repeat(MARKS, N_PER)
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

  def f(v):
    flat = v.reshape(v.shape[0], -1)
    group = jax.lax.stop_gradient(jnp.floor(flat[:, :1] * 4.0))
    z = (flat - 0.5) @ w + b  # centred: margins of the order of what eps can move
    zd = (jax.lax.stop_gradient(flat) - 0.5) @ w + b
    return jnp.where(
      group == 0,
      z,
      jnp.where(
        group == 1, _gradient_gate(z, K - 1), jnp.where(group == 2, _gradient_gate(z, 2), zd)
      ),
    )

  x = jnp.asarray(x.astype(np.float32).reshape(-1, 8, 8, 1))
  near = np.tile(np.arange(N_PER) < N_NEAR, 4)
  return f, x, jnp.argmax(f(x), -1), near


def _input_grads(f, x, y, t):
  """Per-point input gradients [N, D] of the three losses the gradient
  attacks differentiate: CE (APGD-CE), targeted DLR (APGD-T) and
  ``z_t - z_y`` (FAB-T), each through ``f`` as the attacks call it."""

  def per_point(loss):
    def g(xi, yi, ti):
      return loss(f(xi[None]), yi[None], ti[None])[0]

    return jax.vmap(jax.grad(g))(x, y, t).reshape(len(x), -1)

  def fab_diff(z, yi, ti):
    return (jnp.take_along_axis(z, ti[:, None], -1) - jnp.take_along_axis(z, yi[:, None], -1))[:, 0]

  return {
    "apgd-ce": per_point(lambda z, yi, ti: losses.cross_entropy(z, yi)),
    "apgd-t": per_point(losses.targeted_dlr),
    "fab-t": per_point(fab_diff),
  }


def test_each_group_lets_through_the_gradients_it_is_built_for():
  """The premise of the ensemble test below: at every point, each gradient
  attack's loss has a nonzero input gradient exactly in the groups built
  for that attack or a later one (A: all three, B: APGD-T and FAB-T, C:
  FAB-T only, D: none), at the clean points and for every target APGD-T
  and FAB-T try."""
  f, x, y, _ = _problem()
  group = np.repeat(np.arange(4), N_PER)
  reach = {"apgd-ce": 0, "apgd-t": 1, "fab-t": 2}  # the last group each attack sees into
  order = np.argsort(np.asarray(f(x)), -1)
  grads = jax.jit(lambda t: _input_grads(f, x, y, t))
  for rank in range(2, K + 1):
    for name, g in grads(jnp.asarray(order[:, K - rank])).items():
      nonzero = np.asarray(jnp.any(g != 0, axis=-1))
      np.testing.assert_array_equal(nonzero, group <= reach[name], err_msg=f"{name}, rank {rank}")


@pytest.mark.slow
def test_each_attack_breaks_points_the_previous_ones_did_not():
  f, x, y, near = _problem()
  opts = {"square": {"num_queries": 1000}}
  res, stages = jax.jit(
    lambda x, y, k: autoattack.autoattack(f, x, y, eps=EPS, keys=k, options=opts)
  )(x, y, keys_for(len(y)))
  stages = {k: np.asarray(v) for k, v in stages.items()}
  group = np.repeat(np.arange(4), N_PER)
  order = ["clean", *autoattack.STANDARD]
  newly = {b: stages[a] & ~stages[b] for a, b in zip(order, order[1:])}
  counts = {name: np.bincount(group[v], minlength=4).tolist() for name, v in newly.items()}
  assert stages["clean"].all()
  for g, name in enumerate(autoattack.STANDARD):
    # Each attack breaks points of the group built for it, and no attack
    # before it breaks any point there.
    assert newly[name][group == g].sum() > 0, (name, counts)
    for earlier in autoattack.STANDARD[:g]:
      assert not newly[earlier][group == g].any(), (earlier, g, counts)
  # FAB-T's first step is exact on a linear model: it breaks every point of
  # group C within reach.
  np.testing.assert_array_equal(newly["fab-t"][group == 2], near[group == 2], err_msg=str(counts))
  # Nothing breaks a point whose minimal perturbation is beyond eps.
  assert stages["square"][~near].all(), counts
  checked, summary = verify.verify(f, x, y, res.x_adv, EPS, res.robust)
  assert verify.problems(summary, EPS) == []
  np.testing.assert_array_equal(checked, res.robust)
