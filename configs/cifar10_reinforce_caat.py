"""Reinforce-CAAT on CIFAR-10, PreAct-ResNet-18 (paper Section 4.4, SPEC 6).

  python -m caat_jax.main --config=configs/cifar10_reinforce_caat.py --workdir=runs/c10_reinforce

A strategy net picks each sample's direction (adversary / anti-adversary) and
bound ({3..15}/255) and is trained by REINFORCE every 20 classifier steps;
lam = 0.005 as the paper's CIFAR-10 setting. No meta set is needed, so the
whole training split is used (data.meta_per_class = 0). Variance reduction
(not in the paper): --config.reinforce.baseline=batch_mean (or ema), and
--config.reinforce.entropy_bonus=0.01 against a collapsing policy. Watch
train/alpha, train/entropy_direction, train/adv_ratio_per_class and
train/eps_per_class in metrics.jsonl. Hardware: one GPU, a few hours (one
attack pass per step: about TRADES' cost, 1.17x PGD-AT).
"""

from configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.method = "reinforce_caat"
  c.data.meta_per_class = 0
  c.reinforce.lam = 0.005
  c.reinforce.k = 20
  c.reinforce.bound_set = tuple(range(3, 16))
  c.reinforce.optimizer = "adam"
  c.reinforce.learning_rate = 1e-3
  c.reinforce.baseline = "none"
  c.reinforce.entropy_bonus = 0.0
  return c
