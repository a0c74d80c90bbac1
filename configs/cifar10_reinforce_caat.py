"""Reinforce-CAAT on CIFAR-10, PreAct-ResNet-18 (paper Section 4.4, docs/method.md §6).

  python -m caat_jax.main --config=configs/cifar10_reinforce_caat.py --workdir=runs/c10_reinforce

A strategy net picks each sample's strategy (direction x bound, {3..15}/255,
one joint categorical) and is trained by REINFORCE every 20 classifier steps;
lam = 0.005 as the paper's CIFAR-10 setting. The reward is each sample's
first-order effect on the robust loss of a clean meta batch (300 per class
held out, Section 6.1); --config.reinforce.reward=paper gives Eq. 34 literally
(plain SGD, no baseline; the policy drifts to all-adversary) and
--config.data.meta_per_class=0 then uses the whole training split. Watch
train/p_adv, train/entropy, train/adv_ratio_per_class, train/eps_per_class and
train/eps_per_direction in metrics.jsonl. Hardware: one GPU, a few hours (one
attack pass per step plus the meta batch's every 20th: about TRADES' cost,
1.17x PGD-AT).
"""

from caat_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")


def get_config():
  c = cifar10.get_config()
  c.method = "reinforce_caat"
  # default.py's Reinforce-CAAT keys are the paper's CIFAR-10 settings: lam
  # 0.005, a strategy-net update every k = 20 steps, bounds {3..15}/255 and the
  # look-ahead reward, measured on cifar10.py's clean meta set (Section 6.1:
  # 300 per class; its meta batch is config.meta.batch_size).
  return c
