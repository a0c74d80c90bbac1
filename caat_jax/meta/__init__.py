"""Meta-gradient variants behind one interface (docs/method.md §5).

A variant is a module under ``caat_jax/meta/`` exporting
``VARIANT = problem.Variant(name, make, cost, options)`` plus one line in
``_MODULES`` below; ``make(**options)`` returns
``fn(problem, omega, params) -> (grad, info)``. See
docs/extending.md.
"""

import importlib

from caat_jax.meta.problem import (
  Costs,
  Lookahead,
  MetaProblem,
  Variant,
  sgd_lookahead,
  sgd_momentum_wd_lookahead,
  weighted_loss,
)

_MODULES = (
  "nested_grad",
  "jvp",
  "first_order",
  "k_step",
  "layerwise",
  "neumann",
  "evograd",
)

VARIANTS: dict[str, Variant] = {}
for _name in _MODULES:
  _v = importlib.import_module(f"{__name__}.{_name}").VARIANT
  VARIANTS[_v.name] = _v


def get(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f"config.meta.variant={name!r}; valid: {', '.join(VARIANTS)}")
  return VARIANTS[name]


def options_from(meta_cfg, variant: Variant) -> dict:
  """The variant's options read from ``config.meta``."""
  return {k: meta_cfg[k] for k in variant.options}


def make(meta_cfg):
  """The configured variant's function, its options bound (``config.meta``)."""
  v = get(meta_cfg.variant)
  return v.make(**options_from(meta_cfg, v))


def validate(meta_cfg) -> None:
  """Checks the configured variant's options by value (``checks.ConfigError``)."""
  v = get(meta_cfg.variant)
  if v.validate is not None:
    v.validate(**options_from(meta_cfg, v))


def reuses_lookahead(meta_cfg) -> bool:
  """Whether the configured variant can take its meta gradient at a look-ahead
  it is handed (``MetaProblem.lookahead_point``)."""
  v = get(meta_cfg.variant)
  r = v.reuses_lookahead
  return bool(r(**options_from(meta_cfg, v)) if callable(r) else r)


def cost(meta_cfg, costs: Costs) -> float:
  """Forward units F per example of the configured variant (docs/method.md §11)."""
  v = get(meta_cfg.variant)
  return v.cost(costs, **options_from(meta_cfg, v))


__all__ = [
  "Costs",
  "Lookahead",
  "MetaProblem",
  "VARIANTS",
  "Variant",
  "cost",
  "get",
  "make",
  "reuses_lookahead",
  "sgd_lookahead",
  "sgd_momentum_wd_lookahead",
  "validate",
  "weighted_loss",
]
