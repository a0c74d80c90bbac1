"""``first_order``: gradient alignment at W (an approximation, docs/method.md §5).

The meta gradient is taken at W instead of W_hat, i.e.
meta(W_hat) ~ meta(W) - lr <g_meta(W), g(w)>, exact to first order in lr.
Saves the look-ahead's training gradient and the meta pass at W_hat; the
per-sample inner products still come from one JVP.
"""

from caat_jax.meta.jvp import aligned_grad
from caat_jax.meta.problem import Costs, MetaProblem, Variant


def first_order(problem: MetaProblem, omega, params):
  return aligned_grad(problem, omega, params, at_lookahead=False)


def cost(c: Costs) -> float:
  return c.objective + c.jvp


VARIANT = Variant("first_order", make=lambda: first_order, cost=cost)
