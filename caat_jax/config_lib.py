"""Start-up validation of a run config.

Every check runs before any data is read or anything is compiled, and every
message names the offending key, its value and what would be valid.
"""

import re

import ml_collections

from caat_jax.data import DATASETS, NOISE_TYPES
from caat_jax.models import MODELS
from caat_jax.parallel import BACKENDS

SCHEDULES = ("piecewise", "cosine", "constant")
OPTIMIZERS = ("sgd",)
DTYPES = ("float32", "bfloat16")
STEP_RULES = ("fixed", "eps_frac")
UNROLL = ("auto", "true", "false")
_PGD_RE = re.compile(r"^pgd(\d+)$")


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def _choice(key: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(
        f"config.{key}={value!r} is not valid; choose one of: "
        + ", ".join(repr(v) for v in valid))


def _check(key: str, ok: bool, value, want: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is not valid: must be {want}.")


def parse_eval_attack(name: str) -> int:
  """'pgd20' -> 20 (number of PGD steps); raises ConfigError otherwise."""
  m = _PGD_RE.match(str(name))
  if not m or int(m.group(1)) < 1:
    raise ConfigError(
        f"config.eval.attacks contains {name!r}; valid: 'pgd<k>' with k >= 1, "
        "e.g. 'pgd10', 'pgd20', 'pgd100'.")
  return int(m.group(1))


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


def _validate_caat(config) -> None:
  from caat_jax import bounds, fairness, meta  # pylint: disable=g-import-not-at-top
  from caat_jax.methods import meta_caat  # pylint: disable=g-import-not-at-top
  c, m, f = config.caat, config.meta, config.fairness
  _check("caat.lam", c.lam >= 0, c.lam, ">= 0")
  _check("caat.tau", c.tau > 0, c.tau, "> 0")
  _check("caat.hidden", c.hidden >= 1, c.hidden, ">= 1")
  _choice("caat.direction", c.direction, meta_caat.DIRECTIONS)
  _choice("caat.bound", c.bound, bounds.BOUNDS)
  _check("caat.feature_mask", len(c.feature_mask) == 6 and all(v in (0, 1) for v in c.feature_mask),
         c.feature_mask, "six 0/1 entries")
  _check("caat.feature_momentum", 0 <= c.feature_momentum < 1, c.feature_momentum, "in [0, 1)")
  _check("caat.class_loss_momentum", 0 <= c.class_loss_momentum < 1, c.class_loss_momentum,
         "in [0, 1)")
  _choice("meta.variant", m.variant, tuple(meta.VARIANTS))
  _choice("meta.objective", m.objective, meta_caat.OBJECTIVES)
  _choice("meta.lookahead", m.lookahead, meta_caat.LOOKAHEADS)
  _check("meta.k", m.k >= 1, m.k, ">= 1")
  _check("meta.interval", m.interval >= 1, m.interval, ">= 1")
  _check("meta.batch_size", m.batch_size >= 1, m.batch_size, ">= 1")
  _check("meta.learning_rate", m.learning_rate > 0, m.learning_rate, "> 0")
  _choice("fairness.mode", f.mode, fairness.MODES)
  _check("fairness.attack_steps", f.attack_steps >= 1, f.attack_steps, ">= 1")
  uses_meta_set = config.method == "meta_caat" or config.method == "frl" or f.enabled
  if uses_meta_set and config.data.meta_per_class < 1:
    raise ConfigError(
        f"config.data.meta_per_class={config.data.meta_per_class} leaves no meta / "
        f"validation set, which method {config.method!r} needs; use >= 1.")
  if config.method == "meta_caat" and c.bound == "remargin" and not f.enabled:
    raise ConfigError(
        "config.caat.bound='remargin' takes its margins from FRL's multipliers; "
        "set config.fairness.enabled=True (or use caat.bound='fixed' or 'grad').")


def _validate_reinforce(config) -> None:
  from caat_jax import reinforce  # pylint: disable=g-import-not-at-top
  from caat_jax.methods import reinforce_caat  # pylint: disable=g-import-not-at-top
  r = config.reinforce
  _check("reinforce.lam", r.lam >= 0, r.lam, ">= 0")
  _check("reinforce.k", int(r.k) == r.k and r.k >= 1, r.k, "an integer >= 1")
  _choice("reinforce.optimizer", r.optimizer, reinforce_caat.OPTIMIZERS)
  _check("reinforce.learning_rate", r.learning_rate > 0, r.learning_rate, "> 0")
  _check("reinforce.hidden", r.hidden >= 1, r.hidden, ">= 1")
  _check("reinforce.bound_set", len(r.bound_set) >= 1 and all(v > 0 for v in r.bound_set),
         r.bound_set, "a non-empty tuple of positive bounds in 1/255 units")
  _choice("reinforce.baseline", r.baseline, reinforce.BASELINES)
  _check("reinforce.baseline_momentum", 0 <= r.baseline_momentum < 1, r.baseline_momentum,
         "in [0, 1)")
  _check("reinforce.entropy_bonus", r.entropy_bonus >= 0, r.entropy_bonus, ">= 0")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first invalid key.

  Args:
    config: the full run config.
    num_devices: global device count the batch is split over (None: skip the
      divisibility check, e.g. when only loading a config file).
  """
  # Imported here: methods import evaluate, which imports this module.
  from caat_jax.methods import METHODS  # pylint: disable=g-import-not-at-top
  _choice("method", config.method, METHODS)
  for m in config.suite:
    _choice("suite[...]", m, METHODS)
  _choice("model", config.model, MODELS)
  _choice("dtype", config.dtype, DTYPES)
  _check("model_width", int(config.model_width) >= 1, config.model_width, ">= 1")

  d = config.data
  _choice("data.name", d.name, DATASETS)
  _choice("data.noise_type", d.noise_type, NOISE_TYPES)
  _check("data.noise_rate", 0.0 <= d.noise_rate < 1.0, d.noise_rate, "in [0, 1)")
  _check("data.imbalance_factor", d.imbalance_factor >= 1.0, d.imbalance_factor, ">= 1")
  _check("data.meta_per_class", d.meta_per_class >= 0, d.meta_per_class, ">= 0")
  _check("data.test_fraction", 0.0 < d.test_fraction < 1.0, d.test_fraction, "in (0, 1)")

  _check("num_epochs", config.num_epochs >= 1, config.num_epochs, ">= 1")
  _check("batch_size", config.batch_size >= 1, config.batch_size, ">= 1")
  if num_devices is not None and config.method == "meta_caat" and config.meta.batch_size % num_devices:
    raise ConfigError(
        f"config.meta.batch_size={config.meta.batch_size} is not divisible by the "
        f"number of devices ({num_devices}); use a multiple of {num_devices}.")
  if num_devices is not None and config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the number "
        f"of devices ({num_devices}); use a multiple of {num_devices}.")

  o = config.optimizer
  _choice("optimizer.name", o.name, OPTIMIZERS)
  _choice("optimizer.schedule", o.schedule, SCHEDULES)
  _check("optimizer.learning_rate", o.learning_rate > 0, o.learning_rate, "> 0")
  _check("optimizer.momentum", 0 <= o.momentum < 1, o.momentum, "in [0, 1)")
  _check("optimizer.weight_decay", o.weight_decay >= 0, o.weight_decay, ">= 0")
  _check("optimizer.warmup_epochs", 0 <= o.warmup_epochs < config.num_epochs,
         o.warmup_epochs, f"in [0, num_epochs={config.num_epochs})")
  if o.schedule == "piecewise":
    ok = all(0 < e for e in o.decay_epochs) and list(o.decay_epochs) == sorted(o.decay_epochs)
    _check("optimizer.decay_epochs", ok, o.decay_epochs, "increasing positive epochs")

  a = config.attack
  _check("attack.eps", a.eps >= 0, a.eps, ">= 0 (pixel units, e.g. 8/255)")
  _check("attack.step_size", a.step_size > 0, a.step_size, "> 0")
  _check("attack.num_steps", a.num_steps >= 1, a.num_steps, ">= 1")
  _choice("attack.step_rule", a.step_rule, STEP_RULES)
  _choice("attack.unroll", str(a.unroll).lower(), UNROLL)
  _check("trades.beta", config.trades.beta >= 0, config.trades.beta, ">= 0")
  _validate_caat(config)
  _validate_reinforce(config)

  e = config.eval
  _check("eval.eps", e.eps >= 0, e.eps, ">= 0")
  _check("eval.step_size", e.step_size > 0, e.step_size, "> 0")
  _check("eval.batch_size", e.batch_size >= 1, e.batch_size, ">= 1")
  _check("eval.num_examples", e.num_examples >= 0, e.num_examples, ">= 0 (0 = all)")
  for name in e.attacks:
    parse_eval_attack(name)
  _check("eval_every", config.eval_every >= 0, config.eval_every, ">= 0")
  _check("log_every_steps", config.log_every_steps >= 1, config.log_every_steps, ">= 1")
  _check("keep_checkpoints", config.keep_checkpoints >= 1, config.keep_checkpoints, ">= 1")
  _choice("parallel.backend", config.parallel.backend, BACKENDS)
