"""``k_step``: a k-step look-ahead differentiated end to end (SPEC 5).

k look-ahead steps (same batch, perturbations and weights each step); k = 1
is ``nested_grad``. Up to ``scan_above`` steps are written out as
straight-line code: on XLA CPU the differentiated ``lax.scan`` measured 3.5x
slower at k = 1 (even with ``unroll=True``) and 50x slower rolled at k = 6
(digits bench). Longer look-aheads use ``lax.scan`` to bound compile time.
"""

import functools

import jax

from caat_jax.meta.problem import Costs, MetaProblem, Variant


def k_step(problem: MetaProblem, omega, params, k: int = 1, scan_above: int = 16):
  def outer(om):
    w = problem.weights_fn(om)

    def body(p, _):
      return problem.lookahead_fn(p, problem.train_grad(p, w)), None

    w_hat = params
    if k <= scan_above:
      for _ in range(k):
        w_hat, _ = body(w_hat, None)
    else:
      w_hat, _ = jax.lax.scan(body, params, None, length=k)
    return problem.meta_loss_fn(w_hat)

  meta_loss, grad = jax.value_and_grad(outer)(omega)
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def cost(c: Costs, k: int = 1) -> float:
  return k * (c.lookahead + c.second_order) + c.objective


VARIANT = Variant("k_step", make=lambda k=1: functools.partial(k_step, k=k), cost=cost,
                  options=("k",))
