"""What each variant costs inside the method's real step.

``StepTimer`` builds the method's whole train step with the variant as
``config.meta.variant`` (a meta step at every step), wrapped and compiled
as the trainer runs it, once per variant, and times it on a checkpoint's
state and batch. ``units`` reads the forward-pass accounting of
docs/method.md §11 from the method itself: the whole step's F per example,
and its meta part as 2 (F(interval=1) - F(interval=2)) (the meta part is
divided by ``meta.interval``, nothing else is). ``add_ratios`` sets every
row's ratios to the reference's row of the same checkpoint.
"""

import functools
import re
import statistics
import time
from typing import NamedTuple

import jax

from caat_jax import config_lib, meta, methods
from caat_jax.bench import xla
from caat_jax.parallel import REPLICATED, SHARDED

REUSE = "@reuse_step"  # a row name's suffix: the variant under meta.schedule=reuse_step
_ROW = re.compile(r"^(\w+)(?:\[([^\[\]]*)\])?$")


class Row(NamedTuple):
  """What a row name asks for: ``layerwise[layer_scope=subset;layers=head]``
  is ``layerwise`` with those two of its options set (the config's values
  for the rest); a ``@reuse_step`` suffix puts it under that schedule."""

  variant: str
  schedule: str | None
  options: dict


def parse_name(name: str) -> Row:
  """The ``Row`` of a row name; ``ConfigError`` naming ``--variants`` for one
  that does not parse (the variant and option names are checked by
  ``variant_config``)."""
  base, schedule = (name[: -len(REUSE)], "reuse_step") if name.endswith(REUSE) else (name, None)
  m = _ROW.match(base)
  if m is None:
    raise config_lib.ConfigError(
      f"--variants: {name!r} is not <variant>, <variant>[option=value;...] or either with {REUSE}"
    )
  options = {}
  for item in filter(None, (m.group(2) or "").split(";")):
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
      raise config_lib.ConfigError(f"--variants: {name!r}: {item!r} is not option=value")
    options[key.strip()] = value.strip()
  return Row(m.group(1), schedule, options)


def split_name(name: str) -> tuple[str, str | None]:
  """(variant, schedule) of a row name: ``'jvp@reuse_step'`` -> ('jvp',
  'reuse_step'); a plain name keeps the config's schedule (None)."""
  row = parse_name(name)
  return row.variant, row.schedule


def split_names(text: str) -> list[str]:
  """``--variants``' row names: split at the commas outside brackets
  (``layerwise[layers=conv1,head],jvp`` is two rows)."""
  names, depth, start = [], 0, 0
  for i, ch in enumerate(text + ","):
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      names.append(text[start:i].strip())
      start = i + 1
  return [n for n in names if n]


def _typed(key: str, text: str, current):
  """``text`` as a value of ``meta.<key>``, read by the type of the config's
  value: bool (true/false/1/0), int, float (an int is accepted), a tuple of
  names (a comma list), and for a None default a number, None or the text."""
  bad = lambda what: config_lib.ConfigError(f"--variants: meta.{key}={text!r} is not {what}")
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise bad("true or false")
    return text.lower() in ("true", "1")
  if isinstance(current, (int, float)):
    try:
      return int(text) if isinstance(current, int) else float(text)
    except ValueError:
      raise bad("an integer" if isinstance(current, int) else "a number") from None
  if isinstance(current, tuple):
    return tuple(p.strip() for p in text.split(",") if p.strip())
  if current is None:
    if text == "None":
      return None
    try:
      return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
      return text
  return text


def _set_options(meta_cfg, name: str, row: "Row") -> None:
  """Sets ``row``'s options on ``meta_cfg`` (unlocked), each checked to be
  one of its variant's options and typed as the config's value."""
  valid = meta.get(row.variant).options
  for key, text in row.options.items():
    if key not in valid:
      raise config_lib.ConfigError(
        f"--variants: {name!r}: {row.variant} has no option {key!r}; its options: "
        f"{', '.join(valid) or '(none)'}"
      )
    if key not in meta_cfg:
      raise config_lib.ConfigError(
        f"--variants: {name!r}: config.meta has no {key!r} (this config predates {row.variant})"
      )
    try:
      meta_cfg[key] = _typed(key, text, meta_cfg[key])
    except TypeError as e:  # ml_collections refuses the type
      raise config_lib.ConfigError(f"--variants: {name!r}: meta.{key}: {e}") from None


def variant_config(config, name: str, interval: int = 1):
  """``config`` with the row's variant, options and schedule, a meta step
  every ``interval`` steps; ``ConfigError`` for an option the variant does
  not have or a value it refuses."""
  row = parse_name(name)
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.meta.variant = row.variant
    cfg.meta.interval = interval
    if row.schedule:
      cfg.meta.schedule = row.schedule
    if row.options:
      _set_options(cfg.meta, name, row)
      meta.validate(cfg.meta)
  return cfg


def row_meta(meta_cfg, name: str):
  """``config.meta`` as row ``name`` sees it (its options set)."""
  row = parse_name(name)
  if not row.options:
    return meta_cfg
  cfg = meta_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    _set_options(cfg, name, row)
  return cfg


def units(config, name: str) -> tuple[float, float]:
  """(F per example of the whole step, F of its meta part) with ``name``."""
  cost = methods.get(config.method).cost
  one, two = cost(variant_config(config, name, 1)), cost(variant_config(config, name, 2))
  return one, 2.0 * (one - two)


class StepTimer:
  """The whole train step of each variant, compiled once, timed per call."""

  def __init__(self, config, run):
    self.config, self.run = config, run
    self._compiled = {}

  def compiled(self, name: str, rstate, batch):
    if name not in self._compiled:
      run = self.run
      step = functools.partial(
        methods.train_step,
        method_step=run.method.make_step(variant_config(self.config, name), run.ctx),
        ctx=run.ctx,
      )
      wrapped = run.parallel.wrap(
        step, (REPLICATED, SHARDED), (REPLICATED, REPLICATED), donate_argnums=(0,)
      )
      t = time.perf_counter()
      compiled = wrapped.lower(rstate, batch).compile()
      self._compiled[name] = (compiled, time.perf_counter() - t)
    return self._compiled[name]

  def measure(self, name: str, state, host_batch, repeats: int = 5) -> dict:
    """Compile time, median step time (after one warm-up step), XLA FLOPs
    and peak memory of the whole step with variant ``name``."""
    par = self.run.parallel
    rstate, batch = par.replicate(state), par.shard(host_batch)
    compiled, compile_s = self.compiled(name, rstate, batch)
    times = []
    for i in range(max(repeats, 1) + 1):
      t = time.perf_counter()
      rstate, metrics = compiled(rstate, batch)
      jax.block_until_ready((rstate, metrics))
      if i:
        times.append(time.perf_counter() - t)
    step_units, meta_units = units(self.config, name)
    return {
      "step_compile_s": compile_s,
      "step_s": statistics.median(times),
      "step_peak_bytes": xla.xla_peak_bytes(compiled),
      "step_flops": xla.xla_flops(compiled),
      "units_F": step_units,
      "meta_units_F": meta_units,
    }


def _ratio(a, b):
  return a / b if a is not None and b else float("nan")


def add_ratios(rows: list[dict], reference: str) -> None:
  """Each row's cost as a ratio to ``reference``'s row of its checkpoint:
  measured time, the §11 bound, measured / bound, XLA FLOPs and peak memory."""
  refs = {r["checkpoint"]: r for r in rows if r["variant"] == reference}
  for r in rows:
    ref = refs.get(r["checkpoint"])
    if ref is None:
      continue
    r["meta_ratio"] = _ratio(r["meta_s"], ref["meta_s"])
    r["step_ratio"] = _ratio(r["step_s"], ref["step_s"])
    r["meta_bound_ratio"] = _ratio(r["meta_units_F"], ref["meta_units_F"])
    r["step_bound_ratio"] = _ratio(r["units_F"], ref["units_F"])
    r["meta_measured_over_bound"] = _ratio(r["meta_ratio"], r["meta_bound_ratio"])
    r["step_measured_over_bound"] = _ratio(r["step_ratio"], r["step_bound_ratio"])
    r["meta_flops_ratio"] = _ratio(r["meta_flops"], ref["meta_flops"])
    r["meta_peak_ratio"] = _ratio(r["meta_peak_bytes"], ref["meta_peak_bytes"])
