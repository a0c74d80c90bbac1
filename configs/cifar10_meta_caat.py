"""Meta-CAAT on CIFAR-10, PreAct-ResNet-18 (paper settings, docs/method.md §5).

  python -m caat_jax.main --config=configs/cifar10_meta_caat.py --workdir=runs/cifar10_meta_caat
  python -m caat_jax.main --config=configs/cifar10_meta_caat.py:grad ...      # Eq. 26 bound
  python -m caat_jax.main --config=configs/cifar10_meta_caat.py:remargin ...  # FRL ReMargin

Config argument: '' (fixed bound), 'grad' (sample-wise gradient bound, for
noisy labels), 'remargin' (class-wise bounds from FRL's multipliers with the
fairness constraints on, for imbalance/fairness), or an ablation of
``configs/meta_caat_variants.py``: 'setting1'..'setting4' (Fig. 14),
'without' (Table 9), 'features=110111' (Fig. 15). The paper fine-tunes from a
PGD-AT hot start: pass --config.init_from=runs/cifar10_pgd_at. Meta step every
iteration with a meta batch as large as the batch; the official code used
meta.interval=50 (set it for a ~4x cheaper run). Hardware: one GPU, hours.
"""

from caat_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")
meta_caat_variants = config_files.sibling(__file__, "meta_caat_variants")


def get_config(arg: str = ""):
  c = cifar10.get_config()
  c.method = "meta_caat"
  # default.py's: lam = tau = 1, the jvp meta-gradient of the robust meta
  # objective through an SGD look-ahead, Adam 1e-3, a meta step every step.
  c.meta.batch_size = 128
  if arg == "grad":
    c.caat.bound = "grad"
  elif arg == "remargin":
    c.caat.bound = "remargin"
    c.fairness.enabled = True
  elif arg and not meta_caat_variants.apply(c, arg):
    raise ValueError(
      f"config argument {arg!r}; valid: '', 'grad', 'remargin', "
      + ", ".join(meta_caat_variants.NAMES)
    )
  return c
