"""Names of a classifier's top-level modules, for parameter subsets.

Every model's ``params`` is a dict keyed by its top-level module names: a
stem (``stem_conv``, ``stem_bn``), a body (``stage{s}_block{b}`` in the
ResNets, ``Conv_{i}`` / ``BatchNorm_{i}`` in the small CNN), possibly a
final norm (``final_bn``) and the classifier ``head``. ``module_order``
puts them in forward order from the names alone; ``select_modules`` reads a
spec such as ``'head'``, ``'last_block'`` or ``'stage4_block2,head'``.
"""

import re
from collections.abc import Iterable

SPECS = ("head", "last_block")


def _key(name: str):
  ints = tuple(int(n) for n in re.findall(r"\d+", name))
  if name.startswith("stem"):
    group = 0
  elif name.startswith("final"):
    group = 2
  elif name == "head":
    group = 3
  else:
    group = 1
  # within one index, a conv before its norm (the small CNN's conv-BN pairs)
  return group, ints, 0 if "conv" in name.lower() else 1, name


def module_order(names: Iterable[str]) -> list[str]:
  """Top-level module names in forward order (stem, body by index, final
  norm, head)."""
  return sorted(names, key=_key)


def last_block(names: Iterable[str]) -> list[str]:
  """The last body block (the modules with the highest body index) and
  everything after it (final norm, head), in forward order."""
  order = module_order(names)
  body = [n for n in order if _key(n)[0] == 1]
  top = _key(body[-1])[1] if body else None
  return [n for n in order if _key(n)[0] > 1 or (_key(n)[0] == 1 and _key(n)[1] == top)]


def select_modules(names: Iterable[str], spec: str) -> list[str]:
  """The modules a spec names: ``'head'``, ``'last_block'`` or a comma list
  of top-level module names. Raises ``ValueError`` naming ``meta.layers``
  and the model's modules when one is missing."""
  names = list(names)
  if spec == "last_block":
    chosen = last_block(names)
  else:
    chosen = [n.strip() for n in spec.split(",") if n.strip()]
  missing = [n for n in chosen if n not in names]
  if missing or not chosen:
    raise ValueError(
      f"config.meta.layers={spec!r} names {missing or 'no module'}; the model's modules are "
      + ", ".join(module_order(names))
      + " (or 'last_block')"
    )
  return module_order(chosen)
