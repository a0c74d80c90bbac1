"""SVHN (TFDS svhn_cropped), PreAct-ResNet-18, PGD-AT.

  python -m caat_jax.data.prepare --dataset=svhn --data_dir=$HOME/tensorflow_datasets
  python -m caat_jax.main --config=configs/svhn.py --workdir=runs/svhn_pgd_at

SVHN adversarial training needs a smaller learning rate (0.01) than CIFAR-10
to avoid diverging early; no flip augmentation (digits are not symmetric).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.method = "pgd_at"
  c.model = "preact_resnet18"
  c.data.name = "svhn"
  c.data.meta_per_class = 300
  c.num_epochs = 50
  c.batch_size = 128
  c.optimizer.learning_rate = 0.01
  c.optimizer.schedule = "piecewise"
  c.optimizer.decay_epochs = (25, 40)
  c.attack.eps = 8 / 255
  c.attack.step_size = 2 / 255
  c.eval.attacks = ("pgd20",)
  c.eval_every = 10
  c.log_every_steps = 100
  return c
