"""``neumann``: the implicit-function hypergradient with a truncated Neumann
series (Lorraine et al., AISTATS 2020). docs/method.md §5.

With H the Hessian of the weighted training loss at W (global batch),

    p = sum_{j=0..J} (I - alpha H)^j v,   v = grad meta(W_hat),
    c_ik = -(alpha/n) <p, grad_W L_ik(W)>,   grad_Omega = J_w^T c,

J = ``meta.neumann_steps``, alpha = ``meta.neumann_alpha`` (0 or None: the
look-ahead lr). Hessian-vector products are forward-over-reverse: one
``jax.linearize`` of the training gradient at W (whose primal output is the
look-ahead's gradient g, so that pass is shared) and J applications of it.

What it approximates. If W were a minimiser of the weighted training loss,
dW*/dw_ik = -(1/n) H^{-1} grad L_ik(W) (implicit function theorem), and for
0 < alpha < 2 / lambda_max(H) alpha sum_{j<=J} (I - alpha H)^j -> H^{-1}
geometrically in J: the series converges to the implicit hypergradient. In
Meta-CAAT's one-step setting W is *not* an inner optimum (it is wherever
training is), so the limit J -> infinity is the hypergradient of a
hypothetical fully trained inner problem, linearised at W, not the
derivative of the actual one-step look-ahead. For finite J with alpha = lr
it is the derivative of J + 1 SGD steps on the local quadratic model of the
training loss at W (frozen H and per-sample gradients), with the meta
gradient kept at the one-step W_hat. J = 0 is ``jvp`` exactly; with
negative curvature (non-convex H) the series can grow with J.
"""

import functools

import jax

from caat_jax.checks import check
from caat_jax.meta.jvp import per_sample_dots
from caat_jax.meta.problem import Costs, MetaProblem, Variant

UNROLL_MAX = 16


def neumann_vector(hvp, v, alpha, steps: int):
  """sum_{j=0..steps} (I - alpha H)^j v, ``hvp(u) = H u``.

  Unrolled up to ``UNROLL_MAX`` steps (that many copies of the HVP in the
  program; J is a few with a one-step look-ahead), a while loop beyond (the
  convergence study's J = 200 compiles in seconds). On XLA CPU the HVP inside
  a while loop ran several times slower than unrolled: the digits meta part
  at J = 1 took 525-600 ms in the loop, 106-123 ms unrolled (quiet
  meta_bench, docs/benchmarks.md), 5.7-6.8x and 1.1-1.5x ``nested_grad``'s.
  """

  def body(_, carry):
    u, total = carry
    u = jax.tree.map(lambda a, b: a - alpha * b, u, hvp(u))
    return u, jax.tree.map(lambda a, b: a + b, total, u)

  if steps > UNROLL_MAX:
    return jax.lax.fori_loop(0, steps, body, (v, v))[1]
  carry = (v, v)  # a Python loop: fori_loop(unroll=True) kept J = 1 slow
  for j in range(steps):
    carry = body(j, carry)
  return carry[1]


def neumann(problem: MetaProblem, omega, params, steps: int = 1, alpha=None):
  w, weights_vjp = jax.vjp(problem.weights_fn, omega)
  alpha = problem.lr if not alpha else alpha
  hvp = None
  if steps > 0:
    # the primal output is the look-ahead's training gradient g
    g, hvp = jax.linearize(lambda p: problem.train_grad(p, w), params)
    point = problem.lookahead_point
    if point is None:
      point = problem.lookahead_fn(params, g)
  else:
    point = problem.lookahead(params, w)
  meta_loss, v = jax.value_and_grad(problem.meta_loss_fn)(point)
  v = problem.pmean(v)
  p = neumann_vector(hvp, v, alpha, steps) if steps > 0 else v
  dots = per_sample_dots(problem, params, p)
  (grad,) = weights_vjp(-alpha * dots / w.shape[0])
  return problem.pmean(grad), {"meta_loss": problem.pmean(meta_loss)}


def cost(c: Costs, neumann_steps: int = 1, neumann_alpha=None) -> float:
  # each HVP: the tangent pass of the training gradient, as a second-order pass
  return c.lookahead + c.objective + neumann_steps * c.second_order + c.jvp


def validate(neumann_steps=1, neumann_alpha=None) -> None:
  check(
    "meta.neumann_steps",
    isinstance(neumann_steps, int) and neumann_steps >= 0,
    neumann_steps,
    "an integer >= 0 (0: jvp)",
  )
  check(
    "meta.neumann_alpha",
    neumann_alpha is None or (isinstance(neumann_alpha, (int, float)) and neumann_alpha >= 0),
    neumann_alpha,
    ">= 0 or None (0 / None: the look-ahead lr)",
  )


VARIANT = Variant(
  "neumann",
  make=lambda neumann_steps=1, neumann_alpha=None: functools.partial(
    neumann, steps=int(neumann_steps), alpha=neumann_alpha
  ),
  cost=cost,
  options=("neumann_steps", "neumann_alpha"),
  # with J > 0 the linearisation at W is the look-ahead's pass: nothing to save
  reuses_lookahead=lambda neumann_steps=1, neumann_alpha=None: neumann_steps == 0,
  validate=validate,
)
