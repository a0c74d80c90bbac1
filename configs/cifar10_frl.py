"""FRL (Xu et al. 2021) on CIFAR-10, PreAct-ResNet-18, from a PGD-AT hot start.

  python -m caat_jax.main --config=configs/cifar10.py --workdir=runs/cifar10_pgd_at  # hot start
  python -m caat_jax.main --config=configs/cifar10_frl.py:reweight_remargin \
      --config.init_from=runs/cifar10_pgd_at --workdir=runs/cifar10_frl

Config argument: fairness.mode (reweight | remargin | reweight_remargin |
baseline_reweight). Numbers from the reference scripts (hannxu123/fair_robust,
frlrw.py / frlrmrw.py): fine-tuning for 40 epochs with SGD lr 0.001
(momentum 0.9, weight decay 5e-4, decayed x0.1 at epochs 40 and 80, i.e.
constant over 40 epochs), TRADES beta 1.5, r1 0.05 halved every 40 epochs,
multipliers updated before every epoch on the 300-per-class validation set.
"""

from caat_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")


def get_config(arg: str = "reweight_remargin"):
  c = cifar10.get_config()
  c.method = "frl"
  c.fairness.mode = arg or "reweight_remargin"
  c.trades.beta = 1.5
  c.num_epochs = 40
  c.optimizer.learning_rate = 0.001
  c.optimizer.schedule = "constant"
  return c
