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

from caat_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  c = default.get_config()
  # default.py's: PGD-AT, batch 128, SGD lr 0.1 (momentum 0.9, weight decay
  # 5e-4, piecewise decay), PGD-10 at 8/255 with step 2/255, PGD-20 evaluation.
  c.model = "preact_resnet18"
  c.data.name = "cifar10"
  c.data.meta_per_class = 300
  c.num_epochs = 100
  c.optimizer.decay_epochs = (75, 90)
  c.eval_every = 10
  c.log_every_steps = 100
  return c
