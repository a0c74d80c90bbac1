"""Offline default: scikit-learn's bundled digits (8x8 grey), small CNN.

Runs with no download, on 2 CPU cores, in about 10 minutes. Trains natural,
PGD-AT, TRADES, Meta-CAAT and Reinforce-CAAT one after another into
WORKDIR/<method> and prints one side-by-side per-class table
(WORKDIR/comparison.json):

  python -m caat_jax.main --config=configs/digits.py --workdir=/tmp/caat_digits

A fair comparison: every KL weight is matched (TRADES beta = Meta-CAAT lam =
Reinforce-CAAT lam = 6; the paper compares Meta-CAAT at lam = 1 and
Reinforce-CAAT at 0.005-0.1 with TRADES at 6), Meta-CAAT uses the paper's
grad-based bound (Eq. 26) and Reinforce-CAAT a bound set centred on eps.
Digits pixels are 16 grey levels, so eps is set on that scale (0.1 is about
1.6 levels) rather than CIFAR's 8/255. What the numbers show (3 seeds, the
paper's rows): docs/results/digits.md.
"""

from caat_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  c = default.get_config()
  c.suite = ("natural", "pgd_at", "trades", "meta_caat", "reinforce_caat")
  c.model_width = 16
  c.batch_size = 64
  c.optimizer.learning_rate = 0.05
  c.optimizer.schedule = "cosine"
  c.attack.eps = 0.1
  c.attack.step_size = 0.025
  c.eval.step_size = 0.025
  # The KL weight, matched across TRADES (default.py's beta = 6), Meta-CAAT
  # and Reinforce-CAAT.
  c.caat.lam = 6.0
  c.reinforce.lam = 6.0
  c.caat.bound = "grad"
  c.meta.batch_size = 32
  # Reinforce-CAAT's bounds: the paper's {3..15}/255 scaled to eps 0.1,
  # {10, 13, ..., 46}/255; ~20 steps per epoch, so a strategy update every 5.
  c.reinforce.bound_set = tuple(range(10, 49, 3))
  c.reinforce.k = 5
  c.log_every_steps = 10
  return c
