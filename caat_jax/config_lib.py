"""Start-up validation of a run config, and dotted-key overrides.

Every check runs before any data is read or anything is compiled, and every
message names the offending key, its value and what would be valid. Each
module validates the keys it owns (a method its blocks, ``data`` its block,
``evaluation`` the attack names); this module loops over them and adds the
checks that span modules.
"""

import ast
import math
import os

import ml_collections

from caat_jax import data, evaluators, methods, multihost, optim
from caat_jax.checks import ConfigError, check, choice
from caat_jax.models import MODELS
from caat_jax.parallel import BACKENDS

DTYPES = ("float32", "bfloat16")
UNROLL = ("auto", "true", "false")

__all__ = ["ConfigError", "apply_overrides", "get_dotted", "set_dotted", "validate"]


def get_dotted(config: ml_collections.ConfigDict, key: str):
  """``get_dotted(c, 'meta.batch_size')`` is ``c.meta.batch_size`` (KeyError if absent)."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def set_dotted(config: ml_collections.ConfigDict, key: str, value) -> None:
  """``set_dotted(c, 'meta.batch_size', 32)`` sets ``c.meta.batch_size``."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _parse_value(key: str, old, text: str):
  """``text`` as the type of the config value it replaces (as config_flags does)."""
  if isinstance(old, bool):
    if text.lower() not in ("true", "false"):
      raise ConfigError(f"--config.{key}={text!r}: expected true or false")
    return text.lower() == "true"
  if isinstance(old, str) or old is None:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={text!r}: expected a {type(old).__name__}") from None
  if isinstance(old, tuple) and isinstance(value, (list, tuple)):
    return tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if type(value) is not type(old):
    raise ConfigError(f"--config.{key}={text!r}: expected a {type(old).__name__}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``--config.key=value`` overrides applied.

  ``overrides``: strings ``'--config.a.b=v'`` (the ``--config.`` prefix is
  optional), the spelling of the command line. Raises ``ConfigError`` naming
  an unknown key or a value of the wrong type.
  """
  cfg = config.copy_and_resolve_references()
  for item in overrides:
    text = item.strip()
    for prefix in ("--config.", "config."):
      if text.startswith(prefix):
        text = text[len(prefix) :]
    key, eq, value = text.partition("=")
    if not eq or not key:
      raise ConfigError(f"override {item!r}: expected --config.KEY=VALUE")
    try:
      old = get_dotted(cfg, key)
    except (KeyError, AttributeError):
      raise ConfigError(f"override {item!r}: no config key {key!r}") from None
    with cfg.unlocked():
      set_dotted(cfg, key, _parse_value(key, old, value))
  return cfg


_EPS_RANGE = "in [0, 1]: pixels are in [0, 1], so a bound of 8 levels is 8/255 = 0.0314, not 8"


def _flat(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _check_numbers(config) -> None:
  """Every float in the config finite (``inf`` and ``nan`` are never valid)."""
  for key, value in _flat(config):
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"config.{key}={value!r} is not valid: must be a finite number.")


def _check_switches(config: ml_collections.ConfigDict) -> None:
  """Refuses a method switch (``Method.switches``) set True that no method
  of the run reads: it would do nothing."""
  run = (config.method,) + tuple(config.suite)
  used = {k for name in run for k in methods.get(name).switches}
  for key in sorted({k for m in methods.REGISTRY.values() for k in m.switches} - used):
    if get_dotted(config, key) is True:
      readers = [m.name for m in methods.REGISTRY.values() if key in m.switches]
      raise ConfigError(
        f"config.{key}=True does nothing with config.method={config.method!r}"
        + (f" and config.suite={tuple(config.suite)!r}" if config.suite else "")
        + f"; only {', '.join(readers)} read it: set {key}=False or choose one of those."
      )


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first invalid key.

  Args:
    config: the full run config.
    num_devices: global device count the batch is split over (None: skip the
      divisibility check, e.g. when only loading a config file).
  """
  _check_numbers(config)
  choice("method", config.method, methods.METHODS)
  for m in config.suite:
    choice("suite[...]", m, methods.METHODS)
  choice("model", config.model, MODELS)
  choice("dtype", config.dtype, DTYPES)
  check("model_width", int(config.model_width) >= 1, config.model_width, ">= 1")
  data.validate_config(config.data)
  check("num_epochs", config.num_epochs >= 1, config.num_epochs, ">= 1")
  check("batch_size", config.batch_size >= 1, config.batch_size, ">= 1")
  optim.validate(config.optimizer, config.num_epochs)

  a = config.attack
  check("attack.eps", 0 <= a.eps <= 1, a.eps, _EPS_RANGE)
  check("attack.step_size", a.step_size > 0, a.step_size, "> 0")
  check("attack.num_steps", a.num_steps >= 1, a.num_steps, ">= 1")
  choice("attack.step_rule", a.step_rule, methods.base.STEP_RULES)
  choice("attack.threat_model", a.threat_model, methods.base.THREAT_MODELS)
  choice("attack.unroll", str(a.unroll).lower(), UNROLL)

  for name in (config.method,) + tuple(config.suite):
    method = methods.get(name)
    method.validate(config)
    if method.needs_meta_set(config) and config.data.meta_per_class < 1:
      raise ConfigError(
        f"config.data.meta_per_class={config.data.meta_per_class} leaves no meta / "
        f"validation set, which method {name!r} needs; use >= 1."
      )
    if (
      num_devices is not None and method.meta_batch(config) and config.meta.batch_size % num_devices
    ):
      raise ConfigError(
        f"config.meta.batch_size={config.meta.batch_size} is not divisible by the "
        f"number of devices ({num_devices}); use a multiple of {num_devices}."
      )
  _check_switches(config)
  if num_devices is not None and config.batch_size % num_devices:
    raise ConfigError(
      f"config.batch_size={config.batch_size} is not divisible by the number "
      f"of devices ({num_devices}); use a multiple of {num_devices}."
    )

  e = config.eval
  check("eval.eps", 0 <= e.eps <= 1, e.eps, _EPS_RANGE)
  check("eval.step_size", e.step_size > 0, e.step_size, "> 0")
  check("eval.batch_size", e.batch_size >= 1, e.batch_size, ">= 1")
  check("eval.num_examples", e.num_examples >= 0, e.num_examples, ">= 0 (0 = all)")
  evaluators.check_names(e.attacks, "config.eval.attacks")
  check("eval_every", config.eval_every >= 0, config.eval_every, ">= 0")
  check("log_every_steps", config.log_every_steps >= 1, config.log_every_steps, ">= 1")
  check("keep_checkpoints", config.keep_checkpoints >= 1, config.keep_checkpoints, ">= 1")
  check(
    "checkpoint_every_steps",
    config.checkpoint_every_steps >= 0,
    config.checkpoint_every_steps,
    ">= 0 (0 = at the end of every epoch only)",
  )
  check("bench.num_steps", config.bench.num_steps >= 1, config.bench.num_steps, ">= 1")
  check("bench.batch_size", config.bench.batch_size >= 1, config.bench.batch_size, ">= 1")
  if config.init_from and not os.path.isdir(config.init_from):
    raise ConfigError(
      f"config.init_from={config.init_from!r}: no such directory; give a "
      "run's workdir or its checkpoints/ directory (or '' to start fresh)."
    )
  choice("parallel.backend", config.parallel.backend, BACKENDS)
  try:
    multihost.validate(config.parallel)
  except ValueError as e:
    raise ConfigError(str(e)) from e
