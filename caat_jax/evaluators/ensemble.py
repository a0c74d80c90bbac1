"""The AutoAttack family on the evaluation's devices: compaction, the final
check and the reference's sanity warnings.

AutoAttack runs host-driven (``attacks.compact.autoattack_compact``): between
attacks, and between the targets and restarts of one, the points still
robust are re-packed into buckets, so an attack's cost follows the points
it still has to attack. Buckets are multiples of the device count and run
with the run's ``Parallel.wrap`` (pmap or shard_map), variables replicated.
Keys are per test index (``attacks.aa_keys``), so flags equal those of
``attacks.run_autoattack`` on the same points whatever the batch size or
the device count.

Every returned example is then re-classified (``attacks.verify``): the
re-classified flag is the one counted.
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import losses, pipeline
from caat_jax.attacks import autoattack as aa_lib
from caat_jax.attacks import compact, sanity, verify
from caat_jax.models import layers
from caat_jax.parallel import REPLICATED, SHARDED, Parallel

MIN_BUCKET = 8  # smallest bucket (before rounding up to the device count)
PREFLIGHT_POINTS = 256  # the reference checks its first batch


def _per_device_attack(variables, batch, runs, *, model, name: str, options: Mapping):
  """One attack's run range on one device's share of a bucket."""
  logits_fn = lambda z: model.apply(variables, z, train=False)
  res = aa_lib.run_attack(
    name,
    logits_fn,
    batch["x"],
    batch["label"],
    eps=batch["eps"],
    keys=batch["keys"],
    active=batch["active"],
    runs=(runs[0], runs[1]),
    **dict(options.get(name, {})),
  )
  return res.x_adv, res.robust


def attack_conv_impl(name: str, conv_impl: str = "auto") -> str:
  """How attack ``name``'s loop computes the model's convs: ``conv_impl``
  for the gradient attacks; the backend's own for a gradient-free one
  (Square), whose forward-only loop XLA:CPU runs well (there the matrix
  product form measured 1.2x slower)."""
  return "xla" if name in aa_lib.GRADIENT_FREE else conv_impl


def make_runner(
  parallel: Parallel,
  model,
  variables,
  options: Mapping | None,
  cache: dict,
  conv_impl: str = "auto",
) -> Callable:
  """A runner (``attacks.compact`` contract) over ``parallel``'s devices.

  ``variables`` in the replicated layout; ``cache`` keeps one wrapped
  function per (attack, options) across calls (one compilation per bucket
  size). ``conv_impl``: how the gradient attacks' loops compute the
  model's convs (:func:`attack_conv_impl`,
  ``models.layers.traced_with_conv_impl``; ``'auto'``: as one matrix
  product on a CPU, where XLA's convolution inside a loop is 2-7x slower).
  """
  options = {k: dict(v) for k, v in (options or {}).items()}
  opt_key = compact.options_key(options)

  def runner(name, x, labels, eps, keys, active, runs):
    key = (name, opt_key, conv_impl)
    if key not in cache:
      fn = functools.partial(_per_device_attack, model=model, name=name, options=options)
      fn = layers.traced_with_conv_impl(fn, attack_conv_impl(name, conv_impl))
      cache[key] = parallel.wrap(fn, (REPLICATED, SHARDED, REPLICATED), SHARDED)
    batch = {"x": x, "label": labels, "eps": eps, "keys": keys, "active": active}
    out = cache[key](
      variables,
      parallel.shard(pipeline.host_slice(batch)),
      parallel.replicate(np.asarray(runs, np.int32)),
    )
    x_adv, robust = parallel.gather(out)
    return np.asarray(x_adv), np.asarray(robust, bool)

  return runner


def _per_device_verify(variables, batch, *, model, eps: float):
  logits_fn = lambda z: model.apply(variables, z, train=False)
  checked, partial = verify.verify_batch(
    logits_fn,
    batch["x"],
    batch["label"],
    batch["x_adv"],
    eps,
    batch["robust"],
    valid=batch["valid"],
  )
  clean = batch["valid"] & losses.correct(logits_fn(batch["x"]), batch["label"])
  return {"robust": checked, "clean": clean, **{f: v[None] for f, v in partial.items()}}


def verify_all(
  parallel: Parallel,
  model,
  variables,
  x,
  labels,
  x_adv,
  robust,
  *,
  eps: float,
  batch_size: int,
  cache: dict,
) -> tuple[np.ndarray, np.ndarray, dict]:
  """Re-classifies every example in float32, inference mode, on all devices.

  x, x_adv [N, H, W, C] float32; labels [N]; robust bool [N] (the attacks'
  flags). Returns (robust_checked bool [N], clean_correct bool [N], summary
  with the keys of ``verify.FIELDS``).
  """
  if float(eps) not in cache:
    cache[float(eps)] = parallel.wrap(
      functools.partial(_per_device_verify, model=model, eps=float(eps)),
      (REPLICATED, SHARDED),
      SHARDED,
    )
  step = cache[float(eps)]
  n = len(labels)
  size = -(-batch_size // parallel.num_devices) * parallel.num_devices
  checked, clean, partials = [], [], []
  for s in range(0, n, size):
    idx = np.arange(s, s + size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {
      "x": x[idx],
      "label": labels[idx],
      "x_adv": x_adv[idx],
      "robust": robust[idx],
      "valid": valid,
    }
    out = parallel.gather(step(variables, parallel.shard(pipeline.host_slice(batch))))
    checked.append(out.pop("robust")[valid])
    clean.append(out.pop("clean")[valid])
    partials.append(out)
  return (
    np.concatenate(checked).astype(bool),
    np.concatenate(clean).astype(bool),
    verify.merge_summaries(partials),
  )


def preflight(
  parallel: Parallel,
  model,
  variables,
  x,
  labels,
  names: Sequence[str],
  *,
  options: Mapping | None = None,
  randomised_check: bool = True,
) -> tuple[list[str], list[str]]:
  """The reference's checks before an evaluation on the first points, on one
  device: (common, randomised). ``common`` (``attacks.sanity.preflight``):
  probabilities instead of logits, zero input gradients, too few classes
  (raises ValueError for an attack that cannot run). ``randomised``: the
  randomised-model check, which the version 'standard' runs and 'rand' does
  not; empty unless ``randomised_check``."""
  host_vars = jax.tree.map(jnp.asarray, parallel.fetch(variables))
  apply = jax.jit(lambda v, z: model.apply(v, z, train=False))
  logits_fn = lambda z: apply(host_vars, z)
  n = min(len(labels), PREFLIGHT_POINTS)
  x, labels = jnp.asarray(x[:n]), jnp.asarray(labels[:n])
  common = sanity.preflight(logits_fn, x, labels, names, options=options, randomised_ok=True)
  return common, (sanity.check_randomized(logits_fn, x, labels) if randomised_check else [])


def stage_warnings(stages: Mapping[str, np.ndarray]) -> list[str]:
  """Square more successful than the gradient attacks (``check_square_sr``)."""
  return sanity.check_square_sr({k: float(np.mean(v)) for k, v in stages.items()})
