"""Whether a checkpoint's stored config still fits the run that reads it.

A checkpoint stores its run's config as JSON. Resuming compares it with the
current config key by key: keys that change the training trajectory must
match (``config_differences``, ``check_config_compatible``); keys added to the
config after checkpoints were written get their old-behaviour value first
(``ADDED_KEYS``, ``upgrade_config``).
"""

import copy
import json
import logging
from collections.abc import Iterable
from typing import Any

import ml_collections

from caat_jax.checkpointing.errors import IncompatibleConfigError

# Config keys that may differ between a checkpoint and the run resuming from
# it: they change what is logged, evaluated or saved, where data is read
# from, or how the step is distributed over devices (the step computes the
# same result whatever the device count), but not the training trajectory.
# A key matches an entry if it equals it or lies below it ("eval" covers
# "eval.attacks").
SAFE_TO_CHANGE = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval",
  "eval_every",
  "bench",
  "parallel",
  "suite",
  "init_from",
  "data.data_dir",
  "data.num_workers",  # host-side decode processes: the order is (seed, epoch, step)'s
  "data.prefetch",
)


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dict (a config as JSON) -> {'a.b.c': leaf}."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (tuples become lists), as it is stored."""
  return json.loads(config.to_json_best_effort())


# Config keys added after checkpoints were already being written, each with
# the value that reproduces the behaviour before the key existed. A stored
# config without one gets that value (``upgrade_config``), so old runs still
# evaluate and resume: a key that changed behaviour when it arrived does not
# belong here.
ADDED_KEYS = {
  "data.drop_corrupted": False,
  "data.meta_in_train": False,
  "attack.threat_model": "pixel",
  "caat.anti_bound_scale": 1.0,
  "caat.anti_bound_cap": 0.0,
  "caat.weights": "soft",
  "data.image_size": 224,  # read by the ImageNet pipeline only
  "meta.fd_eps": 0.0,
  "meta.layers": "head",
  "meta.layer_scope": "full",
  "meta.neumann_steps": 1,
  "meta.neumann_alpha": 0.0,
  "meta.evograd_k": 2,
  "meta.evograd_sigma": 1e-3,
  "meta.evograd_tau": 0.05,
  "meta.schedule": "lookahead",
}


def upgrade_config(stored: dict) -> dict:
  """``stored`` with every missing ``ADDED_KEYS`` key at its old-behaviour value."""
  out = copy.deepcopy(stored)
  for key, value in ADDED_KEYS.items():
    *path, leaf = key.split(".")
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return out


def config_differences(
  stored: dict, current: dict, safe: Iterable[str] = SAFE_TO_CHANGE
) -> list[tuple[str, Any, Any]]:
  """Keys whose values differ and matter: [(key, stored value, current value)].

  A key present in only one of the configs counts as differing (None on the
  other side), unless it is safe to change.
  """
  old, new = flatten_config(stored), flatten_config(current)
  safe = tuple(safe)
  diffs = []
  for key in sorted(set(old) | set(new)):
    if any(key == s or key.startswith(s + ".") for s in safe):
      continue
    if old.get(key) != new.get(key):
      diffs.append((key, old.get(key), new.get(key)))
  return diffs


def check_config_compatible(
  stored: dict,
  config: ml_collections.ConfigDict,
  step: int,
  directory: str,
  allow_change: bool,
  reshaped: list[str] = (),
) -> None:
  """Raises ``IncompatibleConfigError`` listing differing keys (unless allowed).

  ``reshaped``: the parameters the change gives another shape or dtype
  ("params.Dense_0.kernel: checkpoint ... -> now ..."). Then
  ``--allow_config_change`` would be refused too, so it is not offered.
  """
  diffs = config_differences(stored, config_as_json(config))
  if not diffs:
    return
  lines = "\n".join(f"  {k}: checkpoint {o!r} -> now {n!r}" for k, o, n in diffs)
  if reshaped and not allow_change:
    more = f" and {len(reshaped) - 1} more" if len(reshaped) > 1 else ""
    raise IncompatibleConfigError(
      f"the checkpoint at step {step} in {directory} was written with a different "
      f"config; these keys differ:\n{lines}\n"
      f"They change the model's parameters ({reshaped[0]}{more}), which no resume can "
      "carry over (--allow_config_change neither): use the original values or another "
      "--workdir."
    )
  if allow_change:
    logging.warning(
      "resuming from step %d with a changed config (--allow_config_change):\n%s", step, lines
    )
    return
  raise IncompatibleConfigError(
    f"the checkpoint at step {step} in {directory} was written with a different "
    f"config; these keys differ:\n{lines}\n"
    "Use the original values, another --workdir, or pass --allow_config_change "
    "to resume anyway."
  )
