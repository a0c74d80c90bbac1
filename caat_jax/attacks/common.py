"""What every attack here shares: the per-sample result, its merge rule,
restarts while any point is still robust, per-sample key folding, and the
small array helpers (broadcasting a per-sample value, the L-inf norm).

APGD, APGD-T, FAB-T and Square build on these, so every attack agrees on
what "robust" means (correct on the clean input and not broken since) and
on how runs combine (the first run that breaks a point keeps it).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from caat_jax import losses

LogitsFn = Callable[[jax.Array], jax.Array]  # [B, H, W, C] -> [B, num_classes]


class AttackResult(NamedTuple):
  """Per-sample outcome of an attack.

  x_adv: [B, H, W, C]; the adversarial example where one was found, else the
    clean input.
  robust: bool [B]; attacked (correctly classified to begin with) and not
    broken.
  """

  x_adv: jax.Array
  robust: jax.Array


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1] to broadcast a per-sample value against images."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


def linf_norm(d: jax.Array) -> jax.Array:
  """max_i |d_i| per example; [B, ...] -> [B]."""
  return jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=-1)


def merge(done: AttackResult, new: AttackResult) -> AttackResult:
  """Takes ``new``'s example only where ``done`` was robust and ``new`` broke it."""
  broken = done.robust & ~new.robust
  return AttackResult(
    jnp.where(bcast(broken, new.x_adv), new.x_adv, done.x_adv), done.robust & new.robust
  )


def initial(logits_fn, x, labels, active):
  """(clean logits, the starting result): robust = correct on the clean
  input (and ``active``, when given); the clean input as the example."""
  clean_logits = logits_fn(x)
  robust = losses.correct(clean_logits, labels)
  if active is not None:
    robust &= active
  return clean_logits, AttackResult(x, robust)


def run_range(num_runs: int, runs) -> tuple[jax.Array, jax.Array]:
  """(first, stop) int32 scalars: ``runs`` = (first, stop) clipped to
  [0, num_runs], or all runs when ``runs`` is None. Traced values are fine,
  so one compilation serves every range."""
  if runs is None:
    return jnp.int32(0), jnp.int32(num_runs)
  first = jnp.clip(jnp.asarray(runs[0], jnp.int32), 0, num_runs)
  return first, jnp.clip(jnp.asarray(runs[1], jnp.int32), first, num_runs)


def repeat(num_runs: int, run_fn, start: AttackResult, runs=None) -> AttackResult:
  """Runs ``run_fn(r) -> AttackResult`` for r = 0, 1, ... (or r in the range
  ``runs``, see :func:`run_range`) while any point is still robust, merging
  each run into the points it breaks first.

  Stopping once nothing is robust changes no per-sample result: later runs
  would only touch points already broken, and those are never overwritten.
  The same holds for splitting the runs into ranges called one after
  another on the points still robust (what ``compact.py`` does).
  """
  first, stop = run_range(num_runs, runs)

  def cond(c):
    r, res = c
    return (r < stop) & jnp.any(res.robust)

  def body(c):
    r, res = c
    return r + 1, merge(res, run_fn(r))

  return jax.lax.while_loop(cond, body, (first, start))[1]


def fold(keys: jax.Array, i) -> jax.Array:
  """[B] keys, each folded with ``i`` (run or iteration ``i``'s keys)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
