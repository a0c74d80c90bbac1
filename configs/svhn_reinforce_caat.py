"""Reinforce-CAAT on SVHN, PreAct-ResNet-18 (paper Section 4.4, SPEC 6).

  python -m caat_jax.data.prepare --dataset=svhn --data_dir=$HOME/tensorflow_datasets
  python -m caat_jax.main --config=configs/svhn_reinforce_caat.py --workdir=runs/svhn_reinforce

As configs/cifar10_reinforce_caat.py with the paper's SVHN weight lam = 0.1
and configs/svhn.py's training schedule (lr 0.01). Hardware: one GPU, hours.
"""

from configs import svhn


def get_config():
  c = svhn.get_config()
  c.method = "reinforce_caat"
  # the clean meta set the look-ahead reward is measured on (Section 6.1: 300
  # per class); its meta batch is config.meta.batch_size
  c.data.meta_per_class = 300
  c.reinforce.reward = "lookahead"
  c.reinforce.lam = 0.1
  c.reinforce.k = 20
  c.reinforce.bound_set = tuple(range(3, 16))
  return c
