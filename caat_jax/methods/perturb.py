"""The one fused attack shared by TRADES, FRL, Meta-CAAT and Reinforce-CAAT.

``perturb`` makes every sample's adversary or anti-adversary in a single PGD
pass, each with its own direction, bound and loss (docs/method.md §2):
adversaries ascend KL(f(x) || f(x')), anti-adversaries descend CE(f(x'), y).
``adversaries`` and ``adversaries_and_anti`` are its two common uses, and
``meta_perturbations`` the meta objective's (``caat.objective``).
"""

import jax
import jax.numpy as jnp

from caat_jax import attacks
from caat_jax.caat import bounds
from caat_jax.methods import base


def perturb(
  ctx: base.StepContext, logits_fn, x, y, clean, *, eps, keys, adversary: jax.Array
) -> jax.Array:
  """Each sample's adversary or anti-adversary, in one PGD pass (docs/method.md §2).

  Args:
    ctx: the step context (attack settings).
    logits_fn: the classifier in inference mode.
    x: [B, H, W, C] clean images; y: [B] labels; clean: [B, C] clean logits
      (the adversaries' KL target).
    eps: [B] bounds (pixel units under the ``pixel`` threat model; the
      attack scales them per channel under ``normalized``).
    keys: [B] per-sample keys for the 0.001 N(0, I) start.
    adversary: [B] bool, True: adversary (ascend KL, sign +1), False:
      anti-adversary (descend CE with the true label, sign -1).
  Returns:
    [B, H, W, C] perturbed images, sample i in B(x_i, eps_i) ∩ [0, 1] under the
    ``pixel`` threat model (``base.threat`` for the others).
  """
  return ctx.pgd(
    logits_fn,
    x,
    y,
    keys,
    eps=eps,
    start="gaussian",
    sign=jnp.where(adversary, 1.0, -1.0),
    loss_kind=jnp.where(adversary, attacks.LOSS_KL, attacks.LOSS_CE).astype(jnp.int32),
    clean_logits=clean,
  )


def adversaries(ctx: base.StepContext, logits_fn, x, y, clean, eps, key) -> jax.Array:
  """KL adversaries of every sample (TRADES, FRL, the robust meta objective)."""
  return perturb(
    ctx,
    logits_fn,
    x,
    y,
    clean,
    eps=eps,
    keys=ctx.sample_keys(key, x.shape[0]),
    adversary=jnp.ones((x.shape[0],), bool),
  )


def adversaries_and_anti(
  ctx: base.StepContext, logits_fn, x, y, clean, *, eps, k_adv, k_at, eps_at=None
) -> tuple[jax.Array, jax.Array]:
  """Adversaries and anti-adversaries of the same inputs: one ``perturb`` over
  the stacked batch [x; x]; ``eps_at`` [B] the anti-adversaries' bounds
  (default ``eps``, the adversaries')."""
  b = x.shape[0]
  eps_at = eps if eps_at is None else eps_at
  both = lambda a, a2: jnp.concatenate([a, a2], axis=0)
  out = perturb(
    ctx,
    logits_fn,
    both(x, x),
    both(y, y),
    both(clean, clean),
    eps=both(eps, eps_at),
    keys=both(ctx.sample_keys(k_adv, b), ctx.sample_keys(k_at, b)),
    adversary=both(jnp.ones((b,), bool), jnp.zeros((b,), bool)),
  )
  return out[:b], out[b:]


def meta_perturbations(ctx: base.StepContext):
  """The meta batch's perturbations for ``caat.objective.meta_loss_fn``.

  Returns ``fn(logits_fn, x, y, k_adv, k_at, *, with_anti) -> (x_adv, x_at)``
  at the fixed bound ``attack.eps``: KL adversaries, and with ``with_anti``
  the anti-adversaries of the same inputs in the same pass (else None).
  """

  def fn(logits_fn, x, y, k_adv, k_at, *, with_anti: bool):
    clean = logits_fn(x)
    eps = bounds.fixed(ctx.attack.eps, x.shape[0])
    if with_anti:
      return adversaries_and_anti(ctx, logits_fn, x, y, clean, eps=eps, k_adv=k_adv, k_at=k_at)
    return adversaries(ctx, logits_fn, x, y, clean, eps, k_adv), None

  return fn
