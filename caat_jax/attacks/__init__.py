"""Attacks on pixel-space inputs in [0, 1] (normalisation lives in the model)."""

from caat_jax.attacks.pgd import LOSS_CE, LOSS_KL, pgd, project, random_start

__all__ = ["LOSS_CE", "LOSS_KL", "pgd", "project", "random_start"]
