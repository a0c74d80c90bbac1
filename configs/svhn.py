"""SVHN (TFDS svhn_cropped), PreAct-ResNet-18, PGD-AT.

  python -m caat_jax.data.prepare --dataset=svhn --data_dir=$HOME/tensorflow_datasets
  python -m caat_jax.main --config=configs/svhn.py --workdir=runs/svhn_pgd_at

SVHN adversarial training needs a smaller learning rate (0.01) than CIFAR-10
to avoid diverging early; no flip augmentation (digits are not symmetric).
Otherwise as configs/cifar10.py (model, attack, meta set, evaluation).
"""

from caat_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")


def get_config():
  c = cifar10.get_config()
  c.data.name = "svhn"
  c.num_epochs = 50
  c.optimizer.learning_rate = 0.01
  c.optimizer.decay_epochs = (25, 40)
  return c
