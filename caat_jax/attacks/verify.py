"""The final check of an attack's output, independent of the attack (docs/method.md §9).

Every returned adversarial example is re-classified and checked before it
counts: inside the L-inf ball, inside [0, 1], finite. The reference
(fra31/auto-attack ``autoattack.py``) prints the largest perturbation and the
NaN count at the end; here the check is a value the caller can act on.

The work is split so it runs batch-wise on device and merges on the host:

* :func:`verify_batch` (pure, jit/pmap-able): per batch, the re-classified
  robust flags [B] and a partial summary of scalars;
* :func:`merge_summaries` (host): max of ``max_linf``, all of ``in_box`` and
  ``finite``, sum of ``flag_mismatch`` and ``num_points``;
* :func:`problems` / :func:`assert_valid` (host): what is wrong with a merged
  summary, as strings or as an exception.

A point's re-classified flag is what the evaluation should count: robust
iff classified correctly clean and either its returned example is
classified correctly or that example is invalid (outside the ball or the
box, or not finite), since an invalid example proves nothing. It wins over
the attack's flag; ``flag_mismatch`` counts where the two disagree, so a
correct attack gives 0.
"""

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import losses
from caat_jax.attacks.common import LogitsFn, linf_norm

FIELDS = ("max_linf", "in_box", "finite", "flag_mismatch", "num_points")
TOLERANCE = 1e-6  # float32 rounding of x + delta, clipped, minus x


def verify_batch(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  x_adv: jax.Array,
  eps,
  robust: jax.Array,
  valid: jax.Array | None = None,
  tol: float = TOLERANCE,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Re-classifies one batch of attack outputs (pure; per device under pmap).

  Args:
    logits_fn: the classifier in inference mode, run in float32 (its logits
      are compared in float32 here whatever it returns).
    x: clean images [B, H, W, C] in [0, 1].
    labels: [B] int.
    x_adv: the attack's examples [B, H, W, C] (``x`` where it found none).
    eps: L-inf bound, scalar or [B].
    robust: bool [B], the attack's flags.
    valid: bool [B], the real points of a padded batch (default all); padding
      is left out of every field.
    tol: slack on ``eps`` for a point to count as inside the ball.
  Returns:
    (robust_checked, partial): ``robust_checked`` bool [B] (False on padding);
    ``partial`` a dict of scalars with the keys of ``FIELDS``: ``max_linf``
    float32, ``in_box`` and ``finite`` bool, ``flag_mismatch`` and
    ``num_points`` int32.
  """
  batch = x.shape[0]
  valid = jnp.ones((batch,), bool) if valid is None else valid.astype(bool)
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (batch,))
  x, x_adv = x.astype(jnp.float32), x_adv.astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(x_adv.reshape(batch, -1)), axis=-1)
  # Non-finite coordinates would hide in max/min; count them as out of bounds.
  dist = jnp.where(finite, linf_norm(jnp.where(jnp.isfinite(x_adv), x_adv - x, 0.0)), jnp.inf)
  flat = x_adv.reshape(batch, -1)
  in_box = finite & jnp.all((flat >= 0.0) & (flat <= 1.0), axis=-1)
  ok_example = finite & in_box & (dist <= eps + tol)
  clean_ok = losses.correct(logits_fn(x).astype(jnp.float32), labels)
  adv_ok = losses.correct(
    logits_fn(jnp.where(jnp.isfinite(x_adv), x_adv, 0.0)).astype(jnp.float32), labels
  )
  robust_checked = valid & clean_ok & (adv_ok | ~ok_example)
  partial = dict(
    max_linf=jnp.max(jnp.where(valid, dist, 0.0)),
    in_box=jnp.all(in_box | ~valid),
    finite=jnp.all(finite | ~valid),
    flag_mismatch=jnp.sum(valid & (robust_checked != robust.astype(bool)), dtype=jnp.int32),
    num_points=jnp.sum(valid, dtype=jnp.int32),
  )
  return robust_checked, partial


def merge_summaries(partials: Iterable[Mapping]) -> dict:
  """Merges per-batch (or per-device: leading axes are reduced too) partial
  summaries into one dict of Python scalars with the keys of ``FIELDS``."""
  out = dict(max_linf=0.0, in_box=True, finite=True, flag_mismatch=0, num_points=0)
  for p in partials:
    p = {k: np.asarray(v) for k, v in p.items()}
    out["max_linf"] = max(out["max_linf"], float(np.max(p["max_linf"])))
    out["in_box"] = out["in_box"] and bool(np.all(p["in_box"]))
    out["finite"] = out["finite"] and bool(np.all(p["finite"]))
    out["flag_mismatch"] += int(np.sum(p["flag_mismatch"]))
    out["num_points"] += int(np.sum(p["num_points"]))
  return out


def problems(summary: Mapping, eps: float, tol: float = TOLERANCE) -> list[str]:
  """What is wrong with a merged summary (empty list: nothing); ``eps`` the
  largest bound used."""
  out = []
  if not summary["finite"]:
    out.append("some adversarial examples are not finite (NaN or inf)")
  if summary["max_linf"] > eps + tol:
    out.append(
      f"an adversarial example is outside the L-inf ball: max |x_adv - x| = "
      f"{summary['max_linf']:.8f} > eps = {eps:.8f}"
    )
  if not summary["in_box"]:
    out.append("some adversarial examples are outside [0, 1]")
  if summary["flag_mismatch"]:
    out.append(
      f"{summary['flag_mismatch']} of {summary['num_points']} points: the attack's "
      "robust flag disagrees with re-classifying its example (the re-classified "
      "flag is used)"
    )
  return out


class VerificationError(ValueError):
  """An attack returned examples that fail the final check."""


def assert_valid(summary: Mapping, eps: float, tol: float = TOLERANCE) -> None:
  """Raises :class:`VerificationError` listing :func:`problems`, if any."""
  found = problems(summary, eps, tol)
  if found:
    raise VerificationError("; ".join(found))


def verify(
  logits_fn: LogitsFn, x, labels, x_adv, eps, robust, tol: float = TOLERANCE
) -> tuple[jax.Array, dict]:
  """:func:`verify_batch` on one batch and its merged summary (one device)."""
  checked, partial = jax.jit(lambda *a: verify_batch(logits_fn, *a, tol=tol))(
    x, labels, x_adv, eps, robust
  )
  return checked, merge_summaries([partial])
