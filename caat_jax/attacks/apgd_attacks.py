"""The two AutoAttack attacks built on one APGD run (``apgd.apgd_run``).

* APGD-CE: restarts of APGD on the cross-entropy (or DLR) loss while any
  point is still robust (``apgd_ce``);
* APGD-T: APGD on the targeted DLR loss, one run per target class, the 2nd,
  3rd, ... largest clean logit (``target_classes``, ``apgd_targeted``).

Settings as the reference's "standard" L-inf version (fra31/auto-attack,
``autopgd_base.py``).
"""

import jax
import jax.numpy as jnp

from caat_jax.attacks.apgd import apgd_run
from caat_jax.attacks.common import AttackResult, LogitsFn, fold, initial, repeat


def apgd_ce(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  active: jax.Array | None = None,
  num_iters: int = 100,
  num_restarts: int = 1,
  rho: float = 0.75,
  loss: str = "ce",
  unroll: int = 1,
  runs=None,
  eot_iter: int = 1,
) -> AttackResult:
  """APGD-CE, untargeted (AutoAttack's first attack; ``loss='dlr'`` gives APGD-DLR).

  Args:
    logits_fn, x, labels, eps, keys: as :func:`apgd_run`.
    active: bool [B], the points to attack (default: all); points misclassified
      clean are never robust.
    num_restarts: random restarts (1 in the standard version); each runs only
      if some point is still robust.
    runs: (first, stop), only restarts first <= r < stop (default all).
    eot_iter: gradient draws per iteration for a :class:`Randomised` model.
  Returns:
    AttackResult: robust = clean-correct & active & not broken by any restart.
  """
  _, start = initial(logits_fn, x, labels, active)
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), labels.shape)

  def run(r):
    return apgd_run(
      logits_fn,
      x,
      labels,
      eps=eps,
      keys=fold(keys, r),
      loss=loss,
      num_iters=num_iters,
      rho=rho,
      unroll=unroll,
      eot_iter=eot_iter,
    )[0]

  return repeat(num_restarts, run, start, runs)


def target_classes(clean_logits: jax.Array, rank: jax.Array) -> jax.Array:
  """The class with the ``rank``-th largest clean logit (rank 2 = runner-up).

  clean_logits [B, C], rank int (traced is fine) -> [B] int.
  """
  order = jnp.argsort(clean_logits, axis=-1)  # ascending
  return jnp.take(order, clean_logits.shape[-1] - rank, axis=-1)


def apgd_targeted(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  active: jax.Array | None = None,
  num_target_classes: int = 9,
  num_restarts: int = 1,
  num_iters: int = 100,
  rho: float = 0.75,
  unroll: int = 1,
  runs=None,
  eot_iter: int = 1,
) -> AttackResult:
  """APGD-T: APGD on the targeted DLR loss, one target class after another.

  The targets are the classes with the 2nd, 3rd, ..., (num_target_classes+1)-th
  largest clean logit (at most C - 1 of them); each target gets
  ``num_restarts`` runs, on the points not yet broken. Run j is restart
  ``j % num_restarts`` of target rank ``j // num_restarts + 2``; ``runs`` =
  (first, stop) does only runs first <= j < stop (default all).
  """
  clean_logits, start = initial(logits_fn, x, labels, active)
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), labels.shape)
  num_targets = min(num_target_classes, clean_logits.shape[-1] - 1)

  def run(j):
    t, r = j // num_restarts, j % num_restarts
    targets = target_classes(clean_logits, t + 2)
    return apgd_run(
      logits_fn,
      x,
      labels,
      eps=eps,
      keys=fold(fold(keys, t), r),
      loss="dlr_targeted",
      targets=targets,
      num_iters=num_iters,
      rho=rho,
      unroll=unroll,
      eot_iter=eot_iter,
    )[0]

  return repeat(num_targets * num_restarts, run, start, runs)
