"""FRL (Xu et al. 2021) on CIFAR-10, PreAct-ResNet-18, from a PGD-AT hot start.

  python -m caat_jax.main --config=configs/cifar10.py --workdir=runs/cifar10_pgd_at  # hot start
  python -m caat_jax.main --config=configs/cifar10_frl.py:reweight_remargin \
      --config.init_from=runs/cifar10_pgd_at --workdir=runs/cifar10_frl

Config argument: fairness.mode (reweight | remargin | reweight_remargin |
baseline_reweight). FRL fine-tunes for about 40 epochs at lr 0.01 with the
multipliers updated every epoch on the 300-per-class validation set.
"""

from configs import cifar10


def get_config(arg: str = "reweight_remargin"):
  c = cifar10.get_config()
  c.method = "frl"
  c.fairness.mode = arg or "reweight_remargin"
  c.trades.beta = 6.0
  c.num_epochs = 40
  c.optimizer.learning_rate = 0.01
  c.optimizer.schedule = "constant"
  return c
