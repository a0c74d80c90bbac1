"""Attacks on pixel-space inputs in [0, 1] (normalisation lives in the model).

AutoAttack's pieces live in their modules (``apgd``, ``fab``, ``square``,
``autoattack``); the names most callers need are re-exported here.
"""

from caat_jax.attacks import (
  apgd,
  apgd_attacks,
  autoattack,
  common,
  compact,
  fab,
  sanity,
  square,
  verify,
)
from caat_jax.attacks.apgd import Randomised, apgd_run
from caat_jax.attacks.apgd_attacks import apgd_ce, apgd_targeted
from caat_jax.attacks.autoattack import ATTACKS, RAND, STANDARD, run_attack
from caat_jax.attacks.autoattack import autoattack as run_autoattack
from caat_jax.attacks.common import AttackResult
from caat_jax.attacks.fab import fab_run, fab_targeted, project_linf
from caat_jax.attacks.pgd import LOSS_CE, LOSS_KL, pgd, project, random_start
from caat_jax.attacks.square import square as square_attack

__all__ = [
  "LOSS_CE",
  "LOSS_KL",
  "pgd",
  "project",
  "random_start",
  "apgd",
  "apgd_attacks",
  "autoattack",
  "common",
  "compact",
  "fab",
  "sanity",
  "square",
  "verify",
  "AttackResult",
  "Randomised",
  "apgd_ce",
  "apgd_run",
  "apgd_targeted",
  "fab_run",
  "fab_targeted",
  "project_linf",
  "square_attack",
  "run_autoattack",
  "run_attack",
  "STANDARD",
  "RAND",
  "ATTACKS",
]
