"""``nested_grad``: the reference meta-gradient (docs/method.md §5).

``jax.grad`` of the meta loss through the look-ahead, whose training gradient
is itself a ``jax.grad`` (second-order autodiff through the classifier).
"""

import jax

from caat_jax.meta.problem import Costs, MetaProblem, Variant


def nested_grad(problem: MetaProblem, omega, params):
  def outer(om):
    w_hat = problem.lookahead_fn(params, problem.train_grad(params, problem.weights_fn(om)))
    return problem.meta_loss_fn(w_hat)

  meta_loss, grad = jax.value_and_grad(outer)(omega)
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def cost(c: Costs) -> float:
  # Back through the training gradient to the weights only, not a full
  # second-order pass (XLA on digits: 2.57 GFLOP against jvp's 2.75; the
  # model: 39F against 42F).
  return c.lookahead + c.objective + c.to_weights


VARIANT = Variant("nested_grad", make=lambda: nested_grad, cost=cost)
