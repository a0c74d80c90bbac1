"""AutoAttack's sanity warnings (fra31/auto-attack ``checks.py``).

The reference warns when an evaluation is likely unreliable: a randomised
model, probabilities instead of logits, zero input gradients, Square
succeeding where the gradient attacks failed, too few classes for the DLR
losses. Each check here returns a list of warning strings (empty: nothing
found) so the caller decides whether to log, store or raise; the class
count check refuses (ValueError) where the attack cannot run at all.

The reference's ``check_dynamic`` (a model that calls ``backward`` in its
forward pass) has no counterpart: a JAX logits function is pure.

Checks on arrays (:func:`check_logits`, :func:`zero_gradient_count`) are
jit/pmap-able per batch; the rest run on the host.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import losses
from caat_jax.attacks.common import LogitsFn

DOC = "see fra31/auto-attack flags_doc.md"


def check_randomized(
  logits_fn: LogitsFn, x, labels, *, n: int = 5, alpha: float = 1e-4
) -> list[str]:
  """Calls ``logits_fn`` ``n`` times on the same batch (host side, so that a
  function drawing fresh randomness per call shows it) and warns if the
  L2-normalised outputs differ by more than ``alpha`` or the number of
  correct predictions changes.

  x [B, H, W, C], labels [B].
  """
  outs = [np.asarray(logits_fn(x), np.float64) for _ in range(n)]
  labels = np.asarray(labels)
  correct = {int(np.sum(np.argmax(o, -1) == labels)) for o in outs}
  normed = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outs]
  diff = max(
    (
      float(np.max(np.linalg.norm(a - b, axis=-1)))
      for i, a in enumerate(normed)
      for b in normed[i + 1 :]
    ),
    default=0.0,
  )
  if len(correct) > 1 or diff > alpha:
    return [
      f"the model seems randomised (outputs differ by {diff:.2e} between calls on "
      f"the same input); evaluate such models with version 'rand' (--version=rand, "
      f"autoattack-rand: EOT over 20 draws, the model wrapped as attacks.apgd.Randomised); {DOC}"
    ]
  return []


def check_logits(logits: jax.Array, alpha: float = 1e-5) -> dict[str, jax.Array]:
  """Per-batch facts about a model's outputs [B, C] (pure, mergeable by
  ``all``): ``probabilities`` (every row in [0, 1] summing to 1, within
  ``alpha``) and ``float32`` (the outputs' dtype is float32, a static fact)."""
  z = logits.astype(jnp.float32)
  probs = (
    (jnp.max(z) < 1.0 + alpha)
    & (jnp.min(z) > -alpha)
    & jnp.all(jnp.abs(jnp.sum(z, -1) - 1.0) < alpha)
  )
  return dict(probabilities=probs, float32=jnp.asarray(logits.dtype == jnp.float32))


def check_output_range(logits, alpha: float = 1e-5) -> list[str]:
  """Warns if the outputs [B, C] look like probabilities rather than logits
  (the DLR and CE losses assume logits), or are not float32 (evaluation
  runs in float32, docs/method.md §9)."""
  facts = check_logits(jnp.asarray(logits), alpha)
  out = []
  if bool(facts["probabilities"]):
    out.append(
      "the outputs seem to be probabilities (rows in [0, 1] summing to 1); "
      f"the attacks need logits; {DOC}"
    )
  if not bool(facts["float32"]):
    out.append(
      f"the logits are {jnp.asarray(logits).dtype}, not float32: rebuild the model "
      "with dtype float32 for evaluation"
    )
  return out


def zero_gradient_count(
  logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, loss: str = "dlr"
) -> jax.Array:
  """Number of points [B] whose input gradient of ``loss`` ('dlr' as the
  reference checks, or 'ce') is exactly zero; an int32 scalar (pure)."""
  loss_fn = losses.dlr if loss == "dlr" else losses.cross_entropy

  def one(xi, yi):
    return loss_fn(logits_fn(xi[None]).astype(jnp.float32), yi[None])[0]

  g = jax.vmap(jax.grad(one))(x, labels)
  return jnp.sum(jnp.all(g.reshape(g.shape[0], -1) == 0, axis=-1), dtype=jnp.int32)


def check_zero_gradients(num_zero: int, num_points: int | None = None) -> list[str]:
  """Warns if any point has a zero input gradient (the reference warns on
  one); ``num_zero`` summed over batches of :func:`zero_gradient_count`."""
  if int(num_zero) > 0:
    of = f" of {num_points}" if num_points is not None else ""
    return [
      f"there are {int(num_zero)}{of} points with zero input gradient; "
      f"gradient-based attacks may be unreliable on them; {DOC}"
    ]
  return []


def check_square_sr(stage_accuracy: Mapping[str, float], alpha: float = 0.002) -> list[str]:
  """Warns if Square lowered the robust accuracy by more than ``alpha`` below
  the other attacks' best.

  Args:
    stage_accuracy: 'clean' and each attack's name -> robust accuracy after
      it (cumulative, as the ensemble's ``stages``), fractions in [0, 1].
  """
  if "square" not in stage_accuracy or len(stage_accuracy) <= 2:
    return []
  best = min(v for k, v in stage_accuracy.items() if k != "square")
  if stage_accuracy["square"] < best - alpha:
    return [
      f"Square Attack lowered the robust accuracy by {best - stage_accuracy['square']:.2%} "
      "after the gradient attacks: the evaluation may be unreliable (gradient "
      f"masking); consider more Square queries and restarts or an adaptive attack; {DOC}"
    ]
  return []


def check_num_classes(
  num_classes: int, attacks: Sequence[str], apgd_targets: int = 9, fab_targets: int = 9
) -> list[str]:
  """Refuses what cannot run and warns about targets that do not exist.

  The DLR loss needs 3 classes (``z_pi3``), the targeted DLR loss 4
  (``z_pi4``): APGD-DLR with fewer than 3 classes or APGD-T with fewer than
  4 raises ValueError, naming the number of classes. More target classes
  than ``num_classes - 1`` gives a warning (the attacks use the C - 1 there
  are).
  """
  if "apgd-t" in attacks and num_classes < 4:
    raise ValueError(
      f"the model has {num_classes} classes: APGD-T's targeted DLR loss needs "
      "at least 4; leave 'apgd-t' out of the attacks"
    )
  if "apgd-dlr" in attacks and num_classes < 3:
    raise ValueError(
      f"the model has {num_classes} classes: APGD-DLR's DLR loss needs at "
      "least 3; leave 'apgd-dlr' out of the attacks"
    )
  out = []
  for name, n in (("apgd-t", apgd_targets), ("fab-t", fab_targets)):
    if name in attacks and n + 1 > num_classes:
      out.append(
        f"{name.upper()} asks for {n} target classes but only {num_classes - 1} "
        "exist; those are used"
      )
  return out


def check_clean_accuracy(previous: float | None, current: float, alpha: float = 1e-3) -> list[str]:
  """Warns if a model's clean accuracy fell from ``previous`` to ``current``
  (e.g. the same model and data evaluated in two calls: the model changed,
  or it is randomised, or the data differ)."""
  if previous is not None and current < previous - alpha:
    return [
      f"clean accuracy dropped from {previous:.2%} to {current:.2%} between calls "
      "on the same data: the model is not the same function"
    ]
  return []


def float32_logits(logits_fn: LogitsFn) -> LogitsFn:
  """``logits_fn`` fed and returning float32. This does not make a
  bfloat16 model compute in float32: rebuild the model with
  ``dtype=float32`` for evaluation (docs/method.md §9); this only guards the attack
  code's inputs and outputs."""
  return lambda x: logits_fn(x.astype(jnp.float32)).astype(jnp.float32)


def preflight(
  logits_fn: LogitsFn,
  x,
  labels,
  attacks: Sequence[str],
  *,
  randomised_ok: bool = False,
  options: Mapping | None = None,
) -> list[str]:
  """The reference's checks before an evaluation, on one host batch: the
  randomised-model check (skipped for ``randomised_ok``, version 'rand'),
  the output range and dtype, zero gradients, the number of classes
  (raises where an attack cannot run)."""
  options = dict(options or {})
  logits = np.asarray(logits_fn(x))
  out = check_num_classes(
    logits.shape[-1],
    attacks,
    dict(options.get("apgd-t", {})).get("num_target_classes", 9),
    dict(options.get("fab-t", {})).get("num_target_classes", 9),
  )
  if not randomised_ok:
    out += check_randomized(logits_fn, x, labels)
  out += check_output_range(logits_fn(x))
  out += check_zero_gradients(zero_gradient_count(logits_fn, x, labels), len(labels))
  return out
