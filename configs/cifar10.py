"""CIFAR-10, PreAct-ResNet-18, PGD-AT with the paper's defaults.

Needs the TFDS data prepared once (TensorFlow only for that step):

  pip install -e '.[prepare]'
  python -m caat_jax.data.prepare --dataset=cifar10 --data_dir=$HOME/tensorflow_datasets
  python -m caat_jax.main --config=configs/cifar10.py --workdir=runs/cifar10_pgd_at

Other methods: --config.method=trades (--config.trades.beta=6) or natural.
Hardware: one modern GPU runs 100 epochs of PGD-AT in a few hours; a 2-core
CPU is far too slow (about 50 s per step). Expected for PGD-AT: ~16% natural
and ~48-52% PGD-20 error on average (Rice et al.'s early-stopped figures).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.method = "pgd_at"
  c.model = "preact_resnet18"
  c.data.name = "cifar10"
  c.data.meta_per_class = 300
  c.num_epochs = 100
  c.batch_size = 128
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.decay_epochs = (75, 90)
  c.attack.eps = 8 / 255
  c.attack.step_size = 2 / 255
  c.attack.num_steps = 10
  c.eval.attacks = ("pgd20",)
  c.eval_every = 10
  c.log_every_steps = 100
  return c
