"""Reinforce-CAAT alone on the offline digits set (minutes on 2 CPU cores).

  python -m caat_jax.main --config=configs/digits_reinforce_caat.py --workdir=runs/digits_reinforce
  python -m caat_jax.main --config=configs/digits_reinforce_caat.py:noisy ...  # 40% uniform noise
  python -m caat_jax.main --config=configs/digits_reinforce_caat.py:lt ...     # long-tailed, IF 10

Digits' eps is 0.1 (about 1.6 of its 16 grey levels) instead of CIFAR's
8/255, so the bound set is the paper's {3..15}/255 scaled by about that
ratio: {10, 13, ..., 46}/255 (13 choices, centred near 0.1). lam = 0.1, the
paper's SVHN value (digits, not natural images). The clean meta hold-out
(10 per class) gives the look-ahead reward its meta batches (32), and keeps
test and training splits as in the other digits configs.
--config.reinforce.reward=paper gives Eq. 34's literal reward for contrast.
What to expect (docs/results/noise.md, 40% uniform noise, 3 seeds, 10
epochs): at lam = 0.1 Eq. 31's KL term is too weak for any robustness (robust
error 99.5%, TRADES beta 6: 23.5%); --config.reinforce.lam=6 gives 35.8%. The
policy does not collapse and gives clean samples more adversaries than
corrupted ones.
Watch train/p_adv, train/alpha (adversary fraction), train/eps,
train/entropy_direction and train/entropy_bound, and for :noisy
train/adv_ratio_clean_noisy and train/p_adv_clean_noisy (entry 0 clean
samples, entry 1 corrupted ones) and train/eps_direction_clean_noisy in
metrics.jsonl; docs/results/plot_reinforce_noisy.py draws them.
"""

from caat_jax import config_files

digits = config_files.sibling(__file__, "digits")


def get_config(arg: str = ""):
  c = digits.get_config()
  c.suite = ()
  c.method = "reinforce_caat"
  c.reinforce.lam = 0.1
  # k = 5 and the bound set {10, 13, ..., 46}/255 come from configs/digits.py
  # (~20 steps per epoch: k = 5 gives the strategy net ~120 updates in 30
  # epochs, k = 20 would give 30).
  if arg == "noisy":
    c.data.noise_type = "uniform"
    c.data.noise_rate = 0.4
  elif arg == "lt":
    c.data.imbalance_factor = 10.0
  elif arg:
    raise ValueError(f"config argument {arg!r}; valid: '', 'noisy', 'lt'")
  return c
