"""Meta-CAAT on ImageNet, ResNet-50 (Table 4; settings as configs/imagenet.py).

  python -m caat_jax.main --config=configs/imagenet_meta_caat.py:grad \
      --config.data.data_dir=$HOME/tfds --workdir=runs/imagenet_meta_caat

Config argument as configs/cifar10_meta_caat.py: '' (fixed bound), 'grad'
(Eq. 26 bound: Table 4's "Meta-CAAT (Grad-based)"), 'remargin' (FRL's
class-wise bounds, fairness on: "Meta-CAAT (ReMargin)"), or an ablation of
configs/meta_caat_variants.py. The meta set is the clean 300-per-class
hold-out; the meta batch is as large as the batch (256), read and augmented by
the same streamed pipeline. The paper fine-tunes from a PGD-AT hot start:
pass --config.init_from=runs/imagenet_pgd_at.
"""

from caat_jax import config_files

imagenet = config_files.sibling(__file__, "imagenet")
meta_caat_variants = config_files.sibling(__file__, "meta_caat_variants")


def get_config(arg: str = ""):
  c = imagenet.get_config()
  c.method = "meta_caat"
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
