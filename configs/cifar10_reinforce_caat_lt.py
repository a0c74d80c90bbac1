"""Reinforce-CAAT on long-tailed CIFAR-10 (Cui et al.; class 0 the head).

  python -m caat_jax.main --config=configs/cifar10_reinforce_caat_lt.py --workdir=runs/c10_rc_lt100
  python -m caat_jax.main --config=configs/cifar10_reinforce_caat_lt.py:10 ...

Config argument: the imbalance factor (default 100). The class proportion is
one of the strategy net's features; train/adv_ratio_per_class and
train/eps_per_class show what it does with head and tail classes.
"""

from caat_jax import config_files

cifar10_reinforce_caat = config_files.sibling(__file__, "cifar10_reinforce_caat")


def get_config(arg: str = "100"):
  c = cifar10_reinforce_caat.get_config()
  c.data.imbalance_factor = float(arg or 100)
  return c
