"""Meta-CAAT on long-tailed CIFAR-10 (Cui et al.; class 0 the head).

  python -m caat_jax.main --config=configs/cifar10_meta_caat_lt.py --workdir=runs/c10_lt100
  python -m caat_jax.main --config=configs/cifar10_meta_caat_lt.py:10 ...

Config argument: the imbalance factor (default 100). ReMargin bounds with the
fairness constraints on, as the paper does for imbalance; the balanced meta
set is held out before subsampling.
"""

from caat_jax import config_files

cifar10_meta_caat = config_files.sibling(__file__, "cifar10_meta_caat")


def get_config(arg: str = "100"):
  c = cifar10_meta_caat.get_config("remargin")
  c.data.imbalance_factor = float(arg or 100)
  return c
