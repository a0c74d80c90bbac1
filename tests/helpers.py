"""Small configs shared by the tests."""

import os
import sys

import jax
import numpy as np

from caat_jax import checkpointing as ckpt_lib
from caat_jax import config_lib, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(**overrides):
  """configs/digits.py shrunk to seconds: 1 epoch, 2-step attacks, 200 test points."""
  sys.path.insert(0, ROOT)
  try:
    from configs import digits  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(ROOT)
  c = digits.get_config()
  c.suite = ()
  c.method = "pgd_at"
  c.model_width = 8
  c.num_epochs = 1
  c.batch_size = 64
  c.attack.num_steps = 2
  c.eval.attacks = ("pgd3",)
  c.eval.num_examples = 200
  c.eval.batch_size = 200
  c.log_every_steps = 5
  # The method settings the tests were written against (the main job's
  # matched KL weights, grad bound and digits-scale bound set are not
  # what these mechanism tests exercise; a test sets what it needs).
  c.caat.lam = 1.0
  c.caat.bound = "fixed"
  c.reinforce.lam = 0.005
  c.reinforce.k = 20
  c.reinforce.bound_set = tuple(range(3, 16))
  for key, value in overrides.items():
    config_lib.set_dotted(c, key, value)
  return c


def restore_final_state(workdir, config):
  """The newest checkpoint of ``workdir`` as (host TrainState, step)."""
  template = train.Run(config).init_state()
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), async_save=False)
  try:
    state, step = ckpt.restore(template, move_aside=False)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state), step
