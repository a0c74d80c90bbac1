"""Training methods, each a pure per-device step behind one interface.

Adding a method: a module with ``METHOD = base.Method(name, step, init_extra)``
and one line in ``REGISTRY``.
"""

from caat_jax.methods import frl, meta_caat, natural, pgd_at, reinforce_caat, trades
from caat_jax.methods.base import Method, StepContext, train_step

REGISTRY: dict[str, Method] = {
    m.name: m for m in (natural.METHOD, pgd_at.METHOD, trades.METHOD, frl.METHOD,
                        meta_caat.METHOD, reinforce_caat.METHOD)
}
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f"config.method={name!r}; valid: {', '.join(METHODS)}")
  return REGISTRY[name]


__all__ = ["METHODS", "REGISTRY", "Method", "StepContext", "get", "train_step"]
