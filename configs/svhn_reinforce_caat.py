"""Reinforce-CAAT on SVHN, PreAct-ResNet-18 (paper Section 4.4, docs/method.md §6).

  python -m caat_jax.data.prepare --dataset=svhn --data_dir=$HOME/tensorflow_datasets
  python -m caat_jax.main --config=configs/svhn_reinforce_caat.py --workdir=runs/svhn_reinforce

As configs/cifar10_reinforce_caat.py with the paper's SVHN weight lam = 0.1
and configs/svhn.py's training schedule (lr 0.01). Hardware: one GPU, hours.
"""

from caat_jax import config_files

svhn = config_files.sibling(__file__, "svhn")


def get_config():
  c = svhn.get_config()
  c.method = "reinforce_caat"
  # the look-ahead reward is measured on svhn.py's clean meta set (Section
  # 6.1: 300 per class); its meta batch is config.meta.batch_size
  c.reinforce.lam = 0.1
  return c
