"""Per-sample perturbation bounds eps_i (docs/method.md §4), pixel units, [B].

The bounds themselves (``fixed``, ``remargin``, ``grad_based``), the factory
that picks one when a step is built (``bound_fn``), the anti-adversaries'
scale and cap of them (``anti_bound_fn``), the largest bound each can give
(``bound_max``, Fig. 8c's range) and the config checks of their keys.
"""

import jax
import jax.numpy as jnp

from caat_jax import attacks, losses
from caat_jax.caat import fairness
from caat_jax.checks import ConfigError, check

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


def grad_based(
  logits_fn,
  x,
  y,
  clean_logits,
  alpha,
  beta,
  *,
  eps: float,
  adv_keys,
  at_keys=None,
  point: str = "start",
  offset: float = 0.9,
  axis_name: str | None = None,
  scale=1.0,
  box=(0.0, 1.0),
) -> jax.Array:
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
    g.max() if axis_name is None else jax.lax.pmax(g.max(), axis_name), 1e-12
  )
  if point == "clean":
    g = ce_grad_norms(logits_fn, y, x)
    g_adv = g_at = g / gmax(g)
  else:
    start = lambda keys: attacks.random_start(x, jnp.full((b,), eps), keys, "gaussian", scale, box)
    g_adv = kl_grad_norms(logits_fn, clean_logits, start(adv_keys))
    g_adv = g_adv / gmax(g_adv)
    if at_keys is None:
      g_at = jnp.zeros_like(g_adv)
    else:
      g_at = ce_grad_norms(logits_fn, y, start(at_keys))
      g_at = g_at / gmax(g_at)
  return jax.lax.stop_gradient((alpha * g_adv + beta * g_at + offset) * eps)


def bound_max(kind: str, eps: float, grad_offset: float = 0.9) -> float:
  """The largest bound ``bound_fn(kind)`` gives (Fig. 8c's bin range):
  fixed eps, ReMargin 2.5 eps, grad (offset + 1) eps."""
  top = {"fixed": 1.0, "remargin": fairness.MARGIN_RANGE[1], "grad": grad_offset + 1.0}
  return float(top[kind] * eps)


def bound_fn(
  kind: str, ctx, *, grad_offset: float = 0.9, grad_point: str = "start", anti: bool = True
):
  """The per-sample bound of ``kind``, chosen when a step is built.

  ``ctx`` is the step context (``methods.base.StepContext``: the training
  attack's eps and threat model, per-sample keys, the device axis). Returns
  ``fn(logits_fn, x, y, clean, *, weights, fair, k_adv, k_at) -> eps [B]``:
  ``weights`` [B, 2] are the (alpha, beta) weights (the grad bound's mix),
  ``fair`` the fairness multipliers (ReMargin's lambda2), ``k_adv`` /
  ``k_at`` the adversaries' and anti-adversaries' keys (the grad bound's
  start points are each attack's own); a bound ignores what it does not
  use. ``anti=False``: no anti-adversaries in this step (their gradient
  norm is not computed).
  """
  eps = ctx.attack.eps
  if kind == "fixed":

    def fixed_bound(logits_fn, x, y, clean, *, weights=None, fair=None, k_adv=None, k_at=None):
      del logits_fn, y, clean, weights, fair, k_adv, k_at
      return fixed(eps, x.shape[0])

    return fixed_bound
  if kind == "remargin":

    def remargin_bound(logits_fn, x, y, clean, *, weights=None, fair, k_adv=None, k_at=None):
      del logits_fn, x, clean, weights, k_adv, k_at
      return remargin(eps, y, fair["lambda2"])

    return remargin_bound
  if kind == "grad":

    def grad_bound(logits_fn, x, y, clean, *, weights, fair=None, k_adv, k_at):
      del fair
      b = x.shape[0]
      return grad_based(
        logits_fn,
        x,
        y,
        clean,
        weights[:, 0],
        weights[:, 1],
        eps=eps,
        adv_keys=ctx.sample_keys(k_adv, b),
        at_keys=ctx.sample_keys(k_at, b) if anti else None,
        point=grad_point,
        offset=grad_offset,
        axis_name=ctx.axis_name,
        scale=ctx.attack.scale,
        box=ctx.attack.box,
      )

    return grad_bound
  raise ValueError(f"bound {kind!r}; valid: {', '.join(BOUNDS)}")


def anti_bound_fn(config):
  """``fn(eps [B]) -> [B]``: the anti-adversaries' bounds from the per-sample
  bounds, ``min(caat.anti_bound_scale * eps_i, caat.anti_bound_cap *
  attack.eps)`` (cap 0: no cap), chosen at build time."""
  scale, cap = float(config.caat.anti_bound_scale), float(config.caat.anti_bound_cap)
  limit = cap * float(config.attack.eps)
  if cap == 0:
    return lambda eps: scale * eps
  return lambda eps: jnp.minimum(scale * eps, limit)


def validate_anti_bound(config) -> None:
  """``caat.anti_bound_scale`` / ``caat.anti_bound_cap`` (Meta- and Reinforce-CAAT)."""
  c = config.caat
  check(
    "caat.anti_bound_scale",
    c.anti_bound_scale >= 0,
    c.anti_bound_scale,
    ">= 0 (1 = the bound as computed, 0 = anti-adversary is the clean input)",
  )
  check(
    "caat.anti_bound_cap",
    c.anti_bound_cap >= 0,
    c.anti_bound_cap,
    ">= 0 (a multiple of attack.eps; 0 = no cap)",
  )
  if c.anti_bound_scale == 0 and c.anti_bound_cap > 0:
    raise ConfigError(
      f"config.caat.anti_bound_cap={c.anti_bound_cap!r} caps nothing with "
      "config.caat.anti_bound_scale=0 (the anti-adversary is the clean input); "
      "set anti_bound_scale > 0 or anti_bound_cap=0."
    )
