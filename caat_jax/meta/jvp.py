"""``jvp``: exact and cheaper than ``nested_grad`` (docs/method.md §5).

The training loss is linear in the weights w, so

    d meta / d w_ik = -lr / n <g_meta, grad_W L_ik(W)>,  g_meta = grad meta(W_hat),

and all n K inner products come from one forward-mode pass (``jax.jvp``) of
the per-sample losses along g_meta; a VJP of the small weighting net maps
them to Omega. No second-order reverse pass through the classifier.

``meta.fd_eps > 0`` replaces the forward-mode pass by the central difference
of DARTS / SAMA (``betty/hypergradient/darts.py``):

    <g_meta, grad_W L_ik(W)> ~ (L_ik(W + h g_meta) - L_ik(W - h g_meta)) / (2 h),
    h = fd_eps / |g_meta|,

i.e. a step of length ``fd_eps`` in parameter space either side of W (the
DARTS normalisation, so that one value suits any gradient scale). Two plain
forward passes, no JVP rule needed (kernels without one), less memory; the
error is O(h^2) (third derivatives of the per-sample losses), zero for
quadratic ones, plus rounding of order ulp(L) / h.
"""

import functools

import jax
import jax.numpy as jnp

from caat_jax.checks import check
from caat_jax.meta.problem import Costs, MetaProblem, Variant


def tree_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def per_sample_dots(problem: MetaProblem, params, g_meta, fd_eps: float = 0.0):
  """[B, K] inner products <g_meta, grad_W L_ik(params)>: one JVP, or
  (``fd_eps > 0``) the central difference of two forward passes."""
  fn = lambda p: problem.per_sample_fn(p)[0]
  if not fd_eps:
    _, dots = jax.jvp(fn, (params,), (g_meta,))
    return dots
  norm = tree_norm(g_meta)
  h = fd_eps / jnp.where(norm > 0, norm, 1.0)
  shift = lambda s: jax.tree.map(lambda p, d: p + (s * h).astype(p.dtype) * d, params, g_meta)
  return (fn(shift(1.0)) - fn(shift(-1.0))) / (2 * h)


def aligned_grad(
  problem: MetaProblem, omega, params, at_lookahead: bool = True, fd_eps: float = 0.0
):
  """-lr/n sum_ik <g_meta, grad_W L_ik(W)> d w_ik / d Omega, with g_meta the
  meta gradient at W_hat (``at_lookahead``: exact for an affine look-ahead)
  or at W (first order)."""
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  point = problem.lookahead(params, w) if at_lookahead else params
  meta_loss, g_meta = jax.value_and_grad(problem.meta_loss_fn)(point)
  dots = per_sample_dots(problem, params, problem.pmean(g_meta), fd_eps)
  (grad,) = weights_vjp(-problem.lr * dots / w.shape[0])
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def jvp(problem: MetaProblem, omega, params, fd_eps: float = 0.0):
  return aligned_grad(problem, omega, params, at_lookahead=True, fd_eps=fd_eps)


def cost(c: Costs, fd_eps: float = 0.0) -> float:
  # the central difference: two forward passes of the per-sample losses
  return c.lookahead + c.objective + (2 * c.forward if fd_eps else c.jvp)


def validate(fd_eps=0.0) -> None:
  check(
    "meta.fd_eps", isinstance(fd_eps, (int, float)) and fd_eps >= 0, fd_eps, ">= 0 (0: exact JVP)"
  )


VARIANT = Variant(
  "jvp",
  make=lambda fd_eps=0.0: functools.partial(jvp, fd_eps=float(fd_eps)),
  cost=cost,
  options=("fd_eps",),
  reuses_lookahead=True,
  validate=validate,
)
