"""A config key added after runs were stored must say how those runs resume.

Checkpoints store their config; resuming compares it key by key, and a key
the stored config lacks counts as a change. So every key of today's
configs/default.py must be one the landed main already had
(``config_keys_landed.txt``), or have its old-behaviour value in
``ADDED_KEYS``, or be safe to change (``SAFE_TO_CHANGE``). Without this, the
meta-gradient options of 2026-12-03 made every earlier Meta-CAAT run refuse
to resume or be benchmarked.
"""

import os

from caat_jax.checkpointing import config_compat
from tests.helpers import config_module

LANDED = os.path.join(os.path.dirname(__file__), "config_keys_landed.txt")


def _landed() -> set[str]:
  with open(LANDED) as f:
    return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def _safe(key: str) -> bool:
  return any(key == s or key.startswith(s + ".") for s in config_compat.SAFE_TO_CHANGE)


def test_every_new_key_resumes_old_runs():
  current = config_compat.flatten_config(
    config_compat.config_as_json(config_module("default").get_config())
  )
  landed = _landed()
  unaccounted = [
    k for k in current if k not in landed and k not in config_compat.ADDED_KEYS and not _safe(k)
  ]
  assert not unaccounted, (
    f"config keys new since the landed main: {unaccounted}; give each its "
    "old-behaviour value in checkpointing.config_compat.ADDED_KEYS (or add it to "
    "SAFE_TO_CHANGE if it cannot change the training trajectory)"
  )
  # an old run's stored config, upgraded, matches today's defaults exactly
  old = {k: v for k, v in current.items() if k in landed}
  nested: dict = {}
  for key, value in old.items():
    *path, leaf = key.split(".")
    node = nested
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  upgraded = config_compat.upgrade_config(nested)
  assert (
    config_compat.config_differences(
      upgraded, config_compat.config_as_json(config_module("default").get_config())
    )
    == []
  )


def test_the_landed_key_list_is_a_real_config():
  landed = _landed()
  assert "meta.variant" in landed and "caat.lam" in landed and len(landed) > 50
  assert "meta.schedule" not in landed  # added 2026-12-03: in ADDED_KEYS instead
