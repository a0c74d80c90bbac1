"""The evaluation attacks by name (docs/method.md §9).

Names: ``pgd<k>`` (CE ascent from a uniform start in the ball, k steps of
``step_size``), ``autoattack`` (the standard ensemble, the reference's
hyper-parameters), ``autoattack-rand`` (the reference's version 'rand'
for randomised defences: APGD-CE and APGD-DLR with EOT over 20 draws) and
AutoAttack's attacks one by one (``apgd-ce``,
``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``). PGD runs per batch in
:func:`eval_fn`; the AutoAttack family runs on the host-driven compacting
path (``ensemble.py``). The randomness of test point i is keyed by its
index i in the evaluated split, so results depend neither on the batch size
nor on the number of devices.
"""

import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from caat_jax import attacks, losses
from caat_jax.attacks import verify
from caat_jax.checks import ConfigError
from caat_jax.data.augment import to_float01

AUTOATTACK = "autoattack"
AUTOATTACK_RAND = "autoattack-rand"  # the reference's version 'rand'
INDIVIDUAL = attacks.ATTACKS  # AutoAttack's attacks, each also evaluable alone
AA_FAMILY = (AUTOATTACK, AUTOATTACK_RAND) + INDIVIDUAL  # the names the compacting path runs
_PGD_RE = re.compile(r"^pgd(\d+)$")
_EVAL_SEED = 1234  # fixed: every run is attacked with the same start noise
_AA_SEED_TAG = 0xAA  # folded into _EVAL_SEED: AutoAttack's keys differ from PGD's
VERIFY_PREFIX = "verify/"  # eval_fn's per-device verification scalars


def pgd_steps(name: str, key: str = "eval.attacks") -> int:
  """'pgd20' -> 20 (number of PGD steps); raises ConfigError otherwise."""
  m = _PGD_RE.match(str(name))
  if not m or int(m.group(1)) < 1:
    raise ConfigError(
      f"config.{key} contains {name!r}; valid: 'pgd<k>' with k >= 1, "
      "e.g. 'pgd10', 'pgd20', 'pgd100'."
    )
  return int(m.group(1))


def is_pgd(name: str) -> bool:
  m = _PGD_RE.match(str(name))
  return bool(m) and int(m.group(1)) >= 1


def ensemble_attacks(name: str) -> tuple[str, ...]:
  """The AutoAttack attacks an AutoAttack-family name runs, in order."""
  if name == AUTOATTACK:
    return attacks.STANDARD
  return attacks.RAND if name == AUTOATTACK_RAND else (name,)


def ensemble_options(name: str, options: Mapping | None = None) -> dict[str, dict]:
  """The per-attack options an AutoAttack-family name runs with: its
  version's (EOT for ``autoattack-rand``), then ``options`` on top."""
  version = "rand" if name == AUTOATTACK_RAND else "standard"
  return attacks.autoattack.version_options(version, options)


def check_names(
  names: Sequence[str], where: str = "config.eval.attacks", allow_autoattack: bool = True
) -> None:
  """Raises ConfigError naming ``where`` (a config key or a flag) for an
  empty list or an unknown attack name, listing every valid name in one
  line. ``allow_autoattack=False`` admits ``pgd<k>`` only."""
  if not names:
    raise ConfigError(f"{where} names no attack; valid: {valid_names(allow_autoattack)}")
  for name in names:
    if name in AA_FAMILY and allow_autoattack:
      continue
    if not is_pgd(name):
      raise ConfigError(f"{where} contains {name!r}; valid: {valid_names(allow_autoattack)}")


def valid_names(allow_autoattack: bool = True) -> str:
  names = ["'pgd<k>' with k >= 1 (e.g. 'pgd20')"]
  if allow_autoattack:
    names += [repr(n) for n in AA_FAMILY]
  return ", ".join(names)


def check_num_classes(names: Sequence[str], num_classes: int) -> list[str]:
  """Refuses (ValueError, one line) an AutoAttack-family attack the model's
  number of classes cannot support (APGD-T needs 4, APGD-DLR 3) before
  anything runs; returns the warnings about missing target classes."""
  wanted = tuple(a for n in names if n in AA_FAMILY for a in ensemble_attacks(n))
  if not wanted:
    return []
  return attacks.sanity.check_num_classes(num_classes, wanted)


def aa_keys(index) -> jax.Array:
  """Per-point base keys [N] (raw uint32 [N, 2]) of the AutoAttack family:
  ``fold_in(fold_in(PRNGKey(1234), 0xAA), index)``; the ensemble folds in
  each attack's position (``attacks.autoattack.stage_keys``)."""
  base = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), _AA_SEED_TAG)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(index, jnp.int32))


def eval_fn(
  variables,
  batch,
  *,
  model,
  attack_names: Sequence[str],
  eps: float,
  step_size: float,
  unroll: bool,
  aa_options: Mapping | None = None,
):
  """Per-device evaluation of one batch: clean accuracy and every PGD attack
  (AutoAttack-family names are skipped: the evaluator runs them compacted).

  Args:
    variables: classifier ``{'params', 'batch_stats'}``.
    batch: ``image`` [b, H, W, C], ``label`` [b], ``index`` [b] (position in the
      evaluated split; keys the attacks' randomness), optional ``valid`` [b]
      (False on padding, left out of the verification).
    model: the classifier module (inference mode is used).
    attack_names: e.g. ('pgd20', 'autoattack').
    eps, step_size: L-inf bound and PGD step in pixel units.
    unroll: unroll the PGD loop.
    aa_options: unused here (kept so one setting keys one compiled step).
  Returns:
    dict name -> bool [b]: ``natural`` (clean correct) and, per PGD attack,
    the re-classified robust flag (``verify.verify_batch``: correct clean and
    on a valid attacked input); plus ``verify/<name>/<field>`` [1], the
    per-device verification partials (``verify.FIELDS``).
  """
  del aa_options
  x, y = to_float01(batch["image"]), batch["label"]
  logits_fn = lambda z: model.apply(variables, z, train=False)
  nat = losses.correct(logits_fn(x), y)
  out = {"natural": nat}
  b = x.shape[0]
  valid = batch.get("valid")
  for name in attack_names:
    if name in AA_FAMILY:
      continue
    k = pgd_steps(name)
    base_key = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), k)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(batch["index"])
    x_adv = attacks.pgd(
      logits_fn,
      x,
      y,
      eps=jnp.full((b,), eps),
      step_size=jnp.full((b,), step_size),
      num_steps=k,
      keys=keys,
      start="uniform",
      unroll=unroll,
    )
    flag = nat & losses.correct(logits_fn(x_adv), y)
    checked, partial = verify.verify_batch(logits_fn, x, y, x_adv, eps, flag, valid=valid)
    # Padding is never robust in ``checked``; callers drop padding anyway.
    out[name] = checked if valid is None else jnp.where(valid, checked, flag)
    out.update({f"{VERIFY_PREFIX}{name}/{f}": v[None] for f, v in partial.items()})
  return out
