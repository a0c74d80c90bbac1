"""Offline default: scikit-learn's bundled digits (8x8 grey), small CNN.

Runs with no download, on 2 CPU cores, in about 6 minutes. Trains natural,
PGD-AT, TRADES and Meta-CAAT one after another into WORKDIR/<method> and
prints one side-by-side per-class table (WORKDIR/comparison.json):

  python -m caat_jax.main --config=configs/digits.py --workdir=/tmp/caat_digits

Digits pixels are 16 grey levels, so eps is set on that scale (0.1 is about
1.6 levels) rather than CIFAR's 8/255. Expected (PGD-20, eps 0.1): natural
training's robust error far above PGD-AT's and TRADES'; see README.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.suite = ("natural", "pgd_at", "trades", "meta_caat")
  c.method = "pgd_at"
  c.model = "small_cnn"
  c.model_width = 16
  c.data.name = "digits"
  c.data.meta_per_class = 10
  c.num_epochs = 30
  c.batch_size = 64
  c.optimizer.learning_rate = 0.05
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 5e-4
  c.attack.eps = 0.1
  c.attack.step_size = 0.025
  c.eval.step_size = 0.025
  c.eval.attacks = ("pgd20",)
  c.trades.beta = 6.0
  c.caat.lam = 1.0
  c.meta.variant = "jvp"
  c.meta.batch_size = 32
  c.log_every_steps = 10
  return c
