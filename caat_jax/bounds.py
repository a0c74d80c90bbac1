"""Per-sample perturbation bounds eps_i (SPEC section 4), pixel units, [B]."""

import jax
import jax.numpy as jnp

from caat_jax import attacks, fairness, losses

BOUNDS = ("fixed", "remargin", "grad")


def fixed(eps: float, batch: int) -> jax.Array:
  """eps_i = eps."""
  return jnp.full((batch,), eps, jnp.float32)


def remargin(eps: float, labels: jax.Array, lambda2: jax.Array) -> jax.Array:
  """FRL's class-wise ReMargin: eps_i = eps * clip(exp(2 lambda2_{y_i}), 0.98, 2.5)."""
  return eps * fairness.margin_multipliers(lambda2)[labels]


def input_grad_norms(logits_fn, x, y, clean_logits, start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """L2 norms of the input gradients of the adversarial loss KL(f(x) || f(x'))
  and the anti-adversarial loss CE(f(x'), y), both at the start point x'.
  Returns two [B] arrays."""
  def kl(xi, ci):
    return losses.kl_divergence(ci[None], logits_fn(xi[None]))[0]

  def ce(xi, yi):
    return losses.cross_entropy(logits_fn(xi[None]), yi[None])[0]

  flat = lambda g: jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=-1))
  g_adv = jax.vmap(jax.grad(kl))(start, jax.lax.stop_gradient(clean_logits))
  g_at = jax.vmap(jax.grad(ce))(start, y)
  return flat(g_adv), flat(g_at)


def grad_based(logits_fn, x, y, clean_logits, alpha, beta, *, eps: float, keys,
               offset: float = 0.9, axis_name: str | None = None) -> jax.Array:
  """Eq. 26: eps_i = (alpha_i g_adv_i + beta_i g_at_i + offset) * eps.

  ``g_*`` are the input-gradient norms at the attack's start point
  x + 0.001 N(0, I) (the same noise the attack draws from ``keys``), each
  divided by its maximum over the global batch so that they lie in [0, 1].
  The paper does not say how it normalises; this is SPEC's choice.
  """
  start = attacks.random_start(x, jnp.full((x.shape[0],), eps), keys, "gaussian")
  g_adv, g_at = input_grad_norms(logits_fn, x, y, clean_logits, start)
  gmax = lambda g: jnp.maximum(
      g.max() if axis_name is None else jax.lax.pmax(g.max(), axis_name), 1e-12)
  g_adv, g_at = g_adv / gmax(g_adv), g_at / gmax(g_at)
  return jax.lax.stop_gradient((alpha * g_adv + beta * g_at + offset) * eps)
