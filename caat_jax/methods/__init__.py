"""Training methods, each a step factory behind one interface (``base.Method``).

Adding a method: a module under ``caat_jax/methods/`` exporting
``METHOD = base.Method(name, make_step, cost, ...)`` and one line in
``_MODULES`` below. See docs/extending.md.
"""

import importlib

from caat_jax.methods.base import EpochHook, Method, StepContext, train_step

_MODULES = (
  "natural",
  "pgd_at",
  "trades",
  "frl",
  "meta_caat",
  "reinforce_caat",
)

REGISTRY: dict[str, Method] = {}
for _name in _MODULES:
  _m = importlib.import_module(f"{__name__}.{_name}").METHOD
  REGISTRY[_m.name] = _m
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f"config.method={name!r}; valid: {', '.join(METHODS)}")
  return REGISTRY[name]


__all__ = ["METHODS", "REGISTRY", "EpochHook", "Method", "StepContext", "get", "train_step"]
