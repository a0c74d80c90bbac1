"""``jvp``: exact and cheaper than ``nested_grad`` (docs/method.md §5).

The training loss is linear in the weights w, so

    d meta / d w_ik = -lr / n <g_meta, grad_W L_ik(W)>,  g_meta = grad meta(W_hat),

and all n K inner products come from one forward-mode pass (``jax.jvp``) of
the per-sample losses along g_meta; a VJP of the small weighting net maps
them to Omega. No second-order reverse pass through the classifier.
"""

import jax

from caat_jax.meta.problem import Costs, MetaProblem, Variant


def per_sample_dots(problem: MetaProblem, params, g_meta):
  """[B, K] inner products <g_meta, grad_W L_ik(params)>, from one JVP."""
  _, dots = jax.jvp(lambda p: problem.per_sample_fn(p)[0], (params,), (g_meta,))
  return dots


def aligned_grad(problem: MetaProblem, omega, params, at_lookahead: bool = True):
  """-lr/n sum_ik <g_meta, grad_W L_ik(W)> d w_ik / d Omega, with g_meta the
  meta gradient at W_hat (``at_lookahead``: exact for an affine look-ahead)
  or at W (first order)."""
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  point = problem.lookahead_fn(params, problem.train_grad(params, w)) if at_lookahead else params
  meta_loss, g_meta = jax.value_and_grad(problem.meta_loss_fn)(point)
  dots = per_sample_dots(problem, params, problem.pmean(g_meta))
  (grad,) = weights_vjp(-problem.lr * dots / w.shape[0])
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def jvp(problem: MetaProblem, omega, params):
  return aligned_grad(problem, omega, params, at_lookahead=True)


def cost(c: Costs) -> float:
  return c.lookahead + c.objective + c.jvp


VARIANT = Variant("jvp", make=lambda: jvp, cost=cost)
