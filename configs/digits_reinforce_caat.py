"""Reinforce-CAAT alone on the offline digits set (minutes on 2 CPU cores).

  python -m caat_jax.main --config=configs/digits_reinforce_caat.py --workdir=runs/digits_reinforce
  python -m caat_jax.main --config=configs/digits_reinforce_caat.py:noisy ...  # 40% uniform noise
  python -m caat_jax.main --config=configs/digits_reinforce_caat.py:lt ...     # long-tailed, IF 10

Digits' eps is 0.1 (about 1.6 of its 16 grey levels) instead of CIFAR's
8/255, so the bound set is the paper's {3..15}/255 scaled by about that
ratio: {10, 13, ..., 46}/255 (13 choices, centred near 0.1). lam = 0.1, the
paper's SVHN value (digits, not natural images). The meta hold-out is kept
as in the other digits configs so that test and training splits match them.
Watch train/alpha (adversary fraction), train/eps, train/entropy_direction
and train/entropy_bound, and for :noisy train/adv_ratio_clean_noisy (entry 0
clean samples, entry 1 corrupted ones) in metrics.jsonl.
"""

from configs import digits


def get_config(arg: str = ""):
  c = digits.get_config()
  c.suite = ()
  c.method = "reinforce_caat"
  c.reinforce.lam = 0.1
  c.reinforce.k = 20
  c.reinforce.bound_set = tuple(range(10, 49, 3))
  if arg == "noisy":
    c.data.noise_type = "uniform"
    c.data.noise_rate = 0.4
  elif arg == "lt":
    c.data.imbalance_factor = 10.0
  elif arg:
    raise ValueError(f"config argument {arg!r}; valid: '', 'noisy', 'lt'")
  return c
