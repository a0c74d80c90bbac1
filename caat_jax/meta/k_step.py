"""``k_step``: a k-step look-ahead differentiated end to end (docs/method.md §5).

k look-ahead steps (same batch, perturbations and weights each step), the
look-ahead optimiser's buffer (momentum) updated at each; k = 1 is
``nested_grad``. Up to ``scan_above`` steps are written out as
straight-line code: on XLA CPU the differentiated ``lax.scan`` measured 3.5x
slower at k = 1 (even with ``unroll=True``) and 50x slower rolled at k = 6
(digits bench). Longer look-aheads use ``lax.scan`` to bound compile time.
"""

import functools

import jax

from caat_jax.meta.problem import Costs, Lookahead, MetaProblem, Variant


def k_step(problem: MetaProblem, omega, params, k: int = 1, scan_above: int = 16):
  def outer(om):
    w = problem.weights_fn(om)
    lookahead = problem.lookahead_fn
    if not isinstance(lookahead, Lookahead):  # a plain function: no buffer
      lookahead = Lookahead(lambda p, g, buf, f=lookahead: (f(p, g), buf))

    def body(carry, _):
      p, buf = carry
      return lookahead.step(p, problem.train_grad(p, w), buf), None

    carry = (params, lookahead.init)
    if k <= scan_above:
      for _ in range(k):
        carry, _ = body(carry, None)
    else:
      carry, _ = jax.lax.scan(body, carry, None, length=k)
    return problem.meta_loss_fn(carry[0])

  meta_loss, grad = jax.value_and_grad(outer)(omega)
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def cost(c: Costs, k: int = 1) -> float:
  # each step's reverse pass reaches the weights; every step but the first
  # also the parameters it started from (a Hessian-vector product)
  return k * (c.lookahead + c.to_weights) + (k - 1) * c.second_order + c.objective


VARIANT = Variant(
  "k_step", make=lambda k=1: functools.partial(k_step, k=k), cost=cost, options=("k",)
)
