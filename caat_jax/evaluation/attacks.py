"""The evaluation attacks by name (SPEC 9), as one per-device function.

Names: ``pgd<k>`` (CE ascent from a uniform start in the ball, k steps of
``step_size``) and ``autoattack`` (the standard ensemble, the reference's
hyper-parameters). The randomness of test point i is keyed by its index i in
the evaluated split, so results depend neither on the batch size nor on the
number of devices.
"""

import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from caat_jax import attacks, losses
from caat_jax.checks import ConfigError
from caat_jax.data.augment import to_float01

AUTOATTACK = "autoattack"
_PGD_RE = re.compile(r"^pgd(\d+)$")
_EVAL_SEED = 1234  # fixed: every run is attacked with the same start noise
_AA_SEED_TAG = 0xAA  # folded into _EVAL_SEED: AutoAttack's keys differ from PGD's


def pgd_steps(name: str, key: str = "eval.attacks") -> int:
  """'pgd20' -> 20 (number of PGD steps); raises ConfigError otherwise."""
  m = _PGD_RE.match(str(name))
  if not m or int(m.group(1)) < 1:
    raise ConfigError(
        f"config.{key} contains {name!r}; valid: 'pgd<k>' with k >= 1, "
        "e.g. 'pgd10', 'pgd20', 'pgd100'.")
  return int(m.group(1))


def check_names(names: Sequence[str], where: str = "config.eval.attacks",
                allow_autoattack: bool = False) -> None:
  """Raises ConfigError naming ``where`` (a config key or a flag) for an
  unknown attack name, listing every valid name."""
  if not names:
    raise ConfigError(f"{where} names no attack; valid: {valid_names(allow_autoattack)}")
  for name in names:
    if name == AUTOATTACK and allow_autoattack:
      continue
    if not (_PGD_RE.match(str(name)) and int(str(name)[3:]) >= 1):
      raise ConfigError(f"{where} contains {name!r}; valid: {valid_names(allow_autoattack)}")


def valid_names(allow_autoattack: bool = True) -> str:
  return "'pgd<k>' with k >= 1 (e.g. 'pgd20')" + (f", {AUTOATTACK!r}" if allow_autoattack else "")


def eval_fn(variables, batch, *, model, attack_names: Sequence[str], eps: float,
            step_size: float, unroll: bool, aa_options: Mapping | None = None):
  """Per-device evaluation of one batch under every named attack.

  Args:
    variables: classifier ``{'params', 'batch_stats'}``.
    batch: ``image`` [b, H, W, C], ``label`` [b], ``index`` [b] (position in the
      evaluated split; keys the attacks' randomness).
    model: the classifier module (inference mode is used).
    attack_names: e.g. ('pgd20', 'autoattack').
    eps, step_size: L-inf bound and PGD step in pixel units.
    unroll: unroll the PGD loop.
    aa_options: AutoAttack hyper-parameter overrides (tests only).
  Returns:
    dict name -> bool [b]: ``natural`` (clean correct) and, per attack,
    correct on clean *and* attacked input; for AutoAttack also
    ``autoattack/<attack>``, robust after each of its attacks (cumulative).
  """
  x, y = to_float01(batch["image"]), batch["label"]
  logits_fn = lambda z: model.apply(variables, z, train=False)
  nat = losses.correct(logits_fn(x), y)
  out = {"natural": nat}
  b = x.shape[0]
  for name in attack_names:
    if name == AUTOATTACK:
      base = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), _AA_SEED_TAG)
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch["index"])
      result, stages = attacks.run_autoattack(logits_fn, x, y, eps=eps, keys=keys,
                                              options=aa_options)
      stages.pop("clean")  # the same as ``natural``
      out[AUTOATTACK] = result.robust
      out.update({f"{AUTOATTACK}/{k}": v for k, v in stages.items()})
      continue
    k = pgd_steps(name)
    base_key = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), k)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(batch["index"])
    x_adv = attacks.pgd(
        logits_fn, x, y, eps=jnp.full((b,), eps), step_size=jnp.full((b,), step_size),
        num_steps=k, keys=keys, start="uniform", unroll=unroll)
    out[name] = nat & losses.correct(logits_fn(x_adv), y)
  return out
