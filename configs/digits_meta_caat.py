"""Meta-CAAT alone on the offline digits set (a few minutes on 2 CPU cores).

  python -m caat_jax.main --config=configs/digits_meta_caat.py --workdir=runs/digits_meta_caat

Variant via config argument: ``configs/digits_meta_caat.py:grad`` uses the
gradient-norm bound of Eq. 26; ``:noisy`` adds 40% uniform label noise (with
the grad bound), the setting where corrupted samples should lean
anti-adversarial (watch train/adv_ratio_clean_noisy in metrics.jsonl: entry
0 is the clean samples' mean alpha, entry 1 the corrupted ones).

What to expect under 40% uniform noise (docs/results/noise.md; 3 seeds, 10
epochs, PGD-20): Meta-CAAT at this lam = 1 ends far less robust than TRADES
beta 6 (robust error 67 vs 24%, natural 10 vs 4%) although the weighting net
separates corrupted from clean samples as the paper's Fig. 10 shows;
--config.caat.lam=6 gives 34%, and with --config.caat.anti_bound_scale=0
(plain CE instead of anti-adversaries; beyond the paper) 28%. The
ablations of ``configs/meta_caat_variants.py`` run here in minutes:
``:setting1`` .. ``:setting4`` (Fig. 14), ``:without`` (Table 9),
``:features=110111`` (Fig. 15).
"""

from caat_jax import config_files

digits = config_files.sibling(__file__, "digits")
meta_caat_variants = config_files.sibling(__file__, "meta_caat_variants")


def get_config(arg: str = ""):
  c = digits.get_config()
  c.suite = ()
  c.method = "meta_caat"
  c.caat.lam = 1.0
  c.meta.batch_size = 64
  c.caat.bound = "fixed"  # configs/digits.py's main job uses grad; here ':grad' asks for it
  if arg in ("grad", "noisy"):
    c.caat.bound = "grad"
  if arg == "noisy":
    c.data.noise_type = "uniform"
    c.data.noise_rate = 0.4
  elif arg not in ("", "grad") and not meta_caat_variants.apply(c, arg):
    raise ValueError(
      f"config argument {arg!r}; valid: '', 'grad', 'noisy', " + ", ".join(meta_caat_variants.NAMES)
    )
  return c
