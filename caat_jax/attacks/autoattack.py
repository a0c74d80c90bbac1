"""AutoAttack's "standard" L-inf ensemble (Croce & Hein, ICML 2020).

APGD-CE, then APGD-T (9 targets, targeted DLR), then FAB-T (9 targets), then
Square (5000 queries), each with the reference's hyper-parameters
(fra31/auto-attack ``autoattack.py``, ``set_version('standard')``). Each attack
runs on the points still robust after the previous ones (here: all points
are computed, only still-robust ones can change, and an attack's internal
loops stop as soon as no point in the batch is left to break;
``compact.py`` drives the same attacks on re-packed still-robust points
only, with the same per-point results). A point is
robust if it is classified correctly clean and no attack breaks it; its
adversarial example is the one from the first attack that broke it.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from caat_jax import losses
from caat_jax.attacks.apgd_attacks import apgd_ce, apgd_targeted
from caat_jax.attacks.common import AttackResult, LogitsFn, bcast
from caat_jax.attacks.fab import fab_targeted
from caat_jax.attacks.sanity import check_num_classes
from caat_jax.attacks.square import square

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
# The reference's version 'rand', for randomised defences: APGD-CE then
# APGD-DLR, one restart each, the gradient averaged over 20 draws of the
# model (EOT; see ``apgd.Randomised``).
RAND = ("apgd-ce", "apgd-dlr")
RAND_OPTIONS = {
  "apgd-ce": {"num_restarts": 1, "eot_iter": 20},
  "apgd-dlr": {"num_restarts": 1, "eot_iter": 20},
}
# Attacks that only evaluate the model (no input gradient).
GRADIENT_FREE = ("square",)
VERSIONS = ("standard", "rand")  # the reference's set_version choices
_KEY_TAG = 1000  # attack i of the ensemble draws from fold_in(key, 1000 + i)


def version_options(version: str, options: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
  """Per-attack options of a version (``VERSIONS``): the version's
  settings, then ``options`` on top."""
  if version not in VERSIONS:
    raise ValueError(
      f"AutoAttack version {version!r}; valid: {', '.join(repr(v) for v in VERSIONS)}"
    )
  base, options = (RAND_OPTIONS if version == "rand" else {}), dict(options or {})
  return {n: {**base.get(n, {}), **dict(options.get(n, {}))} for n in set(base) | set(options)}


def stage_keys(keys: jax.Array, i: int) -> jax.Array:
  """The per-point keys [B] the ensemble gives its ``i``-th attack."""
  return jax.vmap(lambda k: jax.random.fold_in(k, _KEY_TAG + i))(keys)


def num_runs(name: str, num_classes: int, options: Mapping | None = None) -> int:
  """How many runs (restarts x targets) attack ``name`` makes with ``options``
  (the reference's defaults otherwise); ``runs=(j, j + 1)`` in
  :func:`run_attack` selects run j. Square is one run."""
  o = dict(options or {})
  restarts = o.get("num_restarts", 1)
  if name in ("apgd-ce", "apgd-dlr"):
    return restarts
  if name in ("apgd-t", "fab-t"):
    return min(o.get("num_target_classes", 9), num_classes - 1) * restarts
  if name == "square":
    return 1
  raise ValueError(f"attack {name!r}; valid: {', '.join(ATTACKS)}")


def run_attack(
  name: str,
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  active: jax.Array | None = None,
  unroll: int = 1,
  runs=None,
  **options,
) -> AttackResult:
  """One of AutoAttack's attacks by name, with the reference's defaults.

  ``options`` override hyper-parameters (e.g. ``num_iters`` for quick tests).
  ``runs`` = (first, stop), int scalars (traced is fine): only the runs
  first <= j < stop of the attack's restarts/targets (:func:`num_runs`);
  default all. Square has one run and ignores it.
  """
  kw = dict(eps=eps, keys=keys, active=active, **options)
  if name != "square":
    kw["runs"] = runs
  if name == "apgd-ce":
    return apgd_ce(logits_fn, x, labels, unroll=unroll, **kw)
  if name == "apgd-dlr":
    return apgd_ce(logits_fn, x, labels, loss="dlr", unroll=unroll, **kw)
  if name == "apgd-t":
    return apgd_targeted(logits_fn, x, labels, unroll=unroll, **kw)
  if name == "fab-t":
    return fab_targeted(logits_fn, x, labels, unroll=unroll, **kw)[0]
  if name == "square":
    return square(logits_fn, x, labels, **kw)
  raise ValueError(f"attack {name!r}; valid: {', '.join(ATTACKS)}")


def autoattack(
  logits_fn: LogitsFn,
  x: jax.Array,
  labels: jax.Array,
  *,
  eps,
  keys: jax.Array,
  attacks: Sequence[str] = STANDARD,
  options: Mapping[str, Mapping] | None = None,
  unroll: int = 1,
) -> tuple[AttackResult, dict[str, jax.Array]]:
  """Runs the ensemble on a batch.

  Args:
    logits_fn: the classifier in inference mode, [B, H, W, C] -> [B, C].
    x: clean images [B, H, W, C] in [0, 1].
    labels: [B] int.
    eps: L-inf bound, scalar or [B] (pixel units).
    keys: [B] per-sample PRNG keys (e.g. folded from the test index), so
      results depend neither on the batch size nor on the device count.
    attacks: the attacks in order (default the standard four).
    options: per-attack hyper-parameter overrides, e.g.
      ``{'square': {'num_queries': 500}}``; default the reference's.
    unroll: unroll factor of the iteration loops.
  Returns:
    (result, stages): ``result.robust`` bool [B] and ``result.x_adv``
    [B, H, W, C]; ``stages`` maps 'clean' and each attack's name to the
    robust flags after it (cumulative, so non-increasing along ``attacks``).
  """
  options = dict(options or {})
  x = jax.lax.stop_gradient(x)
  clean_logits = logits_fn(x)
  check_num_classes(clean_logits.shape[-1], attacks)
  robust = losses.correct(clean_logits, labels)
  res = AttackResult(x, robust)
  stages = {"clean": robust}
  for i, name in enumerate(attacks):
    new = run_attack(
      name,
      logits_fn,
      x,
      labels,
      eps=eps,
      keys=stage_keys(keys, i),
      active=res.robust,
      unroll=unroll,
      **dict(options.get(name, {})),
    )
    broken = res.robust & ~new.robust
    res = AttackResult(jnp.where(bcast(broken, x), new.x_adv, res.x_adv), res.robust & new.robust)
    stages[name] = res.robust
  return res, stages
