"""Named Meta-CAAT ablation variants shared by the CIFAR-10 and digits configs.

setting1 .. setting4   Fig. 14: direction x bound. I: adversaries only,
                       fixed bound (TRADES with beta = lam); II: adversaries
                       only, grad bound (Eq. 26); III: adversaries and
                       anti-adversaries, fixed bound; IV: both, grad bound.
without                Table 9 "Without": no learned weights; head classes
                       (count >= median) anti-adversarial, tail classes
                       adversarial, fixed bound.
features=110111        Fig. 15: caat.feature_mask from six 0/1 digits (the
                       features: loss, margin, one-hot distance, entropy,
                       class proportion, class-average loss).
"""

SETTINGS = {
  "setting1": ("adversarial_only", "fixed"),
  "setting2": ("adversarial_only", "grad"),
  "setting3": ("combined", "fixed"),
  "setting4": ("combined", "grad"),
}
NAMES = tuple(SETTINGS) + ("without", "features=<six 0/1 digits>")


def apply(c, arg: str) -> bool:
  """Applies ablation variant ``arg`` to config ``c``; False if ``arg`` is
  not one (the caller handles its own variants)."""
  if arg in SETTINGS:
    c.caat.direction, c.caat.bound = SETTINGS[arg]
    return True
  if arg == "without":
    c.caat.direction, c.caat.bound = "rule", "fixed"
    return True
  if arg.startswith("features="):
    digits = arg[len("features=") :]
    if len(digits) != 6 or set(digits) - {"0", "1"}:
      raise ValueError(
        f"config argument {arg!r}: features= takes six 0/1 digits, e.g. features=110111"
      )
    c.caat.feature_mask = tuple(int(d) for d in digits)
    return True
  return False
