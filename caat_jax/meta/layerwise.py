"""``layerwise``: the inner products over a parameter subset S (FaMUS, Xu et al.
CVPR 2021, ``youjiangxu/FaMUS`` ``grad_operator_layer.py``; the "last layer
only" shortcut of many Meta-Weight-Net reimplementations). docs/method.md §5.

S is a set of top-level modules of the classifier (``meta.layers``: ``head``,
``last_block`` or a comma list of module names, ``models.select_modules``).
The per-sample cotangent keeps only S's part of the exact one,

    c_ik = -(lr/n) <v_S, grad_{W_S} L_ik(W)>,

so for a partition {S_j} of the parameters the parts sum to ``jvp``'s c, and
S = all parameters is ``jvp``. ``meta.layer_scope``:

- ``full``: the exact look-ahead W_hat (all parameters move), v_S the meta
  gradient's S block at W_hat: a truncation of the exact hypergradient;
- ``subset``: the look-ahead moves only S (W_hat_S = lookahead(W, g)_S, the
  rest stays at W), which this computes exactly: the hypergradient of a
  problem whose inner step trains S alone.

The saving is real: the forward-mode pass starts at S (the other parameters
are closed over, so tangents flow only from S onwards), the meta gradient is
taken with respect to S only (its backward pass stops at S), and with
``subset`` the look-ahead's training gradient as well, from the same
linearisation as the inner products (one forward pass of the training batch).
"""

import functools

import jax
import jax.numpy as jnp

from caat_jax import models
from caat_jax.checks import check, choice
from caat_jax.meta.problem import Costs, MetaProblem, Variant

SCOPES = ("full", "subset")


def _names(layers) -> str:
  return layers if isinstance(layers, str) else ",".join(layers)


def split(params, layers):
  """(names of S in forward order, S's parameters, merge(S') -> full tree)."""
  names = models.select_modules(params.keys(), _names(layers))
  merge = lambda sub: type(params)({**params, **sub})
  return names, {n: params[n] for n in names}, merge


def subset_dots(problem: MetaProblem, params, v_sub, layers):
  """[B, K] inner products <v_S, grad_{W_S} L_ik(params)>, one JVP from S."""
  _, sub, merge = split(params, layers)
  _, dots = jax.jvp(lambda s: problem.per_sample_fn(merge(s))[0], (sub,), (v_sub,))
  return dots


def layerwise(problem: MetaProblem, omega, params, layers="head", layer_scope="full"):
  names, sub, merge = split(params, layers)
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  dots_at = None  # v_S -> [B, K] inner products
  if layer_scope == "full":
    point = problem.lookahead(params, w)
  else:  # the look-ahead moves S only, from the training gradient's S block
    # One linearisation from S serves both the gradient (its transpose) and
    # the inner products (the same linear map at v_S): one forward pass of
    # the training batch instead of two.
    _, dots_at = jax.linearize(lambda s: problem.per_sample_fn(merge(s))[0], sub)
    (g_sub,) = jax.linear_transpose(dots_at, sub)(w / w.shape[0])
    g_sub = problem.pmean(g_sub)
    zeros = lambda n: jax.tree.map(jnp.zeros_like, params[n])
    g = type(params)({n: g_sub[n] if n in g_sub else zeros(n) for n in params})
    moved = problem.lookahead_fn(params, g)  # the rest's update is dead code
    point = merge({n: moved[n] for n in names})
  point_merge = lambda s: type(point)({**point, **s})
  meta_loss, v_sub = jax.value_and_grad(lambda s: problem.meta_loss_fn(point_merge(s)))(
    {n: point[n] for n in names}
  )
  v_sub = problem.pmean(v_sub)
  dots = subset_dots(problem, params, v_sub, names) if dots_at is None else dots_at(v_sub)
  (grad,) = weights_vjp(-problem.lr * dots / w.shape[0])
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def cost(c: Costs, layers="head", layer_scope="full") -> float:
  """Exact for the primal forward pass; the parts that run below S (the
  tangents, and with ``subset`` the look-ahead's backward pass) are counted
  in full unless S is the head, whose share is negligible: an upper bound
  otherwise. The objective's backward pass is counted in full (a bound).
  With ``subset`` the look-ahead and the inner products share one forward
  pass of the training batch."""
  head = _names(layers) == "head"
  tangents = 0.0 if head else c.jvp - c.forward
  if layer_scope == "full":
    return c.lookahead + c.objective + c.forward + tangents
  backward = 0.0 if head else c.lookahead - c.forward
  return c.forward + backward + tangents + c.objective


def validate(layers="head", layer_scope="full") -> None:
  choice("meta.layer_scope", layer_scope, SCOPES)
  names = _names(layers) if isinstance(layers, (str, tuple, list)) else None
  parts = [n.strip() for n in names.split(",")] if names else []
  check(
    "meta.layers",
    bool(parts) and all(p.isidentifier() for p in parts),
    layers,
    "'head', 'last_block' or a comma list of top-level module names (e.g. 'stage4_block2,head')",
  )


VARIANT = Variant(
  "layerwise",
  make=lambda layers="head", layer_scope="full": functools.partial(
    layerwise, layers=_names(layers), layer_scope=layer_scope
  ),
  cost=cost,
  options=("layers", "layer_scope"),
  reuses_lookahead=lambda layers="head", layer_scope="full": layer_scope == "full",
  validate=validate,
)
