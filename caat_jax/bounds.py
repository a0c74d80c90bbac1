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


GRAD_POINTS = ("start", "clean")


def _norms(g: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=-1))


def kl_grad_norms(logits_fn, clean_logits, at: jax.Array) -> jax.Array:
  """[B] L2 norms of grad_x' KL(f(x) || f(x')) at x' = ``at`` (the adversary's loss)."""
  def kl(xi, ci):
    return losses.kl_divergence(ci[None], logits_fn(xi[None]))[0]
  return _norms(jax.vmap(jax.grad(kl))(at, jax.lax.stop_gradient(clean_logits)))


def ce_grad_norms(logits_fn, y, at: jax.Array) -> jax.Array:
  """[B] L2 norms of grad_x' CE(f(x'), y) at x' = ``at`` (the anti-adversary's loss)."""
  def ce(xi, yi):
    return losses.cross_entropy(logits_fn(xi[None]), yi[None])[0]
  return _norms(jax.vmap(jax.grad(ce))(at, y))


def grad_based(logits_fn, x, y, clean_logits, alpha, beta, *, eps: float, adv_keys,
               at_keys=None, point: str = "start", offset: float = 0.9,
               axis_name: str | None = None, scale=1.0, box=(0.0, 1.0)) -> jax.Array:
  """Eq. 26: eps_i = (alpha_i g_adv_i + beta_i g_at_i + offset) * eps.

  ``point='start'``: ``g_adv`` is the norm of the adversarial (KL) loss's
  input gradient at the adversary's start point x + 0.001 N (its own noise,
  ``adv_keys``), ``g_at`` that of the anti-adversarial (CE) loss at the
  anti-adversary's own start point (``at_keys``; None: beta is known to be
  0 and g_at is not computed). The KL gradient at a point 0.001 away from x
  is mostly that noise (KL and its gradient vanish at x' = x).
  ``point='clean'``: both are the CE input-gradient norm at the clean x, a
  margin-like signal. Each is divided by its maximum over the global batch,
  so it lies in [0, 1] (the paper does not say how it normalises).
  ``scale`` / ``box``: the training attacks' threat model (``attacks.pgd``),
  so that the start points are the attacks' own.
  """
  b = x.shape[0]
  gmax = lambda g: jnp.maximum(
      g.max() if axis_name is None else jax.lax.pmax(g.max(), axis_name), 1e-12)
  if point == "clean":
    g = ce_grad_norms(logits_fn, y, x)
    g_adv = g_at = g / gmax(g)
  else:
    start = lambda keys: attacks.random_start(x, jnp.full((b,), eps), keys, "gaussian",
                                              scale, box)
    g_adv = kl_grad_norms(logits_fn, clean_logits, start(adv_keys))
    g_adv = g_adv / gmax(g_adv)
    if at_keys is None:
      g_at = jnp.zeros_like(g_adv)
    else:
      g_at = ce_grad_norms(logits_fn, y, start(at_keys))
      g_at = g_at / gmax(g_at)
  return jax.lax.stop_gradient((alpha * g_adv + beta * g_at + offset) * eps)
