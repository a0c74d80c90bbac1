"""``run_meta_bench``: train or restore, capture, probe, cost, report."""

import jax

from caat_jax import config_lib, meta
from caat_jax.meta_bench import capture, cost, probe, report


def check_variants(names) -> None:
  """Raises ``ConfigError`` naming ``--variants`` for an empty list or an
  unknown name (read from ``meta.VARIANTS`` now, so new variants count)."""
  valid = [v for v in meta.VARIANTS if v != capture.CAPTURE]
  if not names:
    raise config_lib.ConfigError(f"--variants is empty; name some of: {', '.join(valid)}")
  bad = [n for n in names if cost.split_name(n)[0] not in valid]
  if bad:
    raise config_lib.ConfigError(
      f"--variants contains {', '.join(map(repr, bad))}; valid: {', '.join(valid)}, "
      f"each also as <name>[option=value;...] (some of its options set) and "
      f"<name>{cost.REUSE} (Meta-CAAT's meta.schedule='reuse_step')"
    )


def incompatible_message(error: Exception) -> str:
  """An ``IncompatibleConfigError`` from resuming the run, with advice that
  fits meta_bench (main's ``--allow_config_change`` is not a flag here)."""
  first, *rest = str(error).split("\n")
  keys = "\n".join([first] + [line for line in rest if line.startswith("  ")])
  return (
    f"{keys}\nmeta_bench measures the run as it was trained: use the original values or "
    "another --workdir; to measure a variant with other options, set them in its row, "
    "e.g. --variants='layerwise[layer_scope=subset]'."
  )


def check_checkpoints(names) -> None:
  if not names:
    raise config_lib.ConfigError(
      f"--checkpoints is empty; name some of: {', '.join(capture.CHECKPOINTS)}"
    )
  bad = [n for n in names if n not in capture.CHECKPOINTS]
  if bad:
    raise config_lib.ConfigError(
      f"--checkpoints contains {', '.join(map(repr, bad))}; valid: {', '.join(capture.CHECKPOINTS)}"
    )


def run_meta_bench(
  config,
  variants,
  workdir: str,
  *,
  checkpoints=capture.CHECKPOINTS,
  num_keys: int = 16,
  repeats: int = 5,
  log=print,
) -> dict:
  """Trains (or restores) ``config`` in ``workdir/run``; at each checkpoint
  captures one step's meta-gradient problem and measures every variant of
  ``variants`` (plus the reference) on it; writes the reports into
  ``workdir``. Everything is checked before training starts."""
  variants, checkpoints = list(variants), list(checkpoints)
  check_variants(variants)
  check_checkpoints(checkpoints)
  if num_keys < 1:
    raise config_lib.ConfigError(f"--keys={num_keys}: must be >= 1")
  config_lib.validate(config)
  reuse = [n for n in variants if cost.split_name(n)[1]]
  if reuse and "schedule" not in config.meta:
    raise config_lib.ConfigError(
      f"--variants names {reuse[0]!r}, but config.method={config.method!r} has no "
      "meta.schedule (Meta-CAAT's)"
    )
  configs = {}
  for name in variants:  # each row's options read and checked before any training
    variant = cost.split_name(name)[0]
    v = meta.get(variant)
    missing = [k for k in v.options if k not in config.meta]
    if missing:
      raise config_lib.ConfigError(
        f"--variants names {variant!r}, whose options {', '.join(missing)} config.meta lacks"
      )
    # the method's own checks too (e.g. a variant that cannot use the real
    # update as its look-ahead under meta.schedule='reuse_step')
    configs[name] = cost.variant_config(config, name)
    config_lib.validate(configs[name])
    probe.variant_fn(variant, configs[name].meta)
  run = capture.make_run(config)
  capture.check_takes_meta_step(config, run)
  # options only the model can refuse (layerwise's layers naming no module)
  capture.check_rows_trace(run, {n: c for n, c in configs.items() if cost.parse_name(n).options})
  saved = capture.train_or_restore(run, workdir, log=log)
  steps = capture.checkpoint_steps(saved, run.total_steps, checkpoints)
  keys = list(jax.random.split(jax.random.PRNGKey(config.seed + 0x3E7B), num_keys))
  timer = cost.StepTimer(config, run)
  names = [probe.REFERENCE] + [v for v in variants if v != probe.REFERENCE]
  rows = []
  for ckpt_name, step in steps.items():
    state = capture.restore(run, workdir, step)
    batch = capture.next_batch(run, step)
    cap = capture.capture(config, run, state, batch, step=step, checkpoint=ckpt_name)
    reuse_cap = (
      capture.capture(
        config, run, state, batch, step=step, checkpoint=ckpt_name, schedule="reuse_step"
      )
      if reuse
      else None
    )
    log(f"meta_bench: {ckpt_name} checkpoint, step {step}")
    for r in probe.probe_checkpoint(
      cap, names, config.meta, keys=keys, repeats=repeats, reuse_cap=reuse_cap
    ):
      r.update(checkpoint=ckpt_name, step=step)
      r.update(timer.measure(r["variant"], state, batch, repeats=repeats))
      rows.append(r)
      log(
        f"  {r['variant']:<14} cos {r['cosine']:.6f} rel {r['rel_error']:.2e} "
        f"rho(c) {r['spearman_c']:.3f} meta {1e3 * r['meta_s']:.1f} ms "
        f"step {1e3 * r['step_s']:.1f} ms"
      )
  cost.add_ratios(rows, probe.REFERENCE)
  result = {
    "backend": jax.default_backend(),
    "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "reference": probe.REFERENCE,
    "num_keys": num_keys,
    "repeats": repeats,
    "checkpoints": steps,
    "total_steps": run.total_steps,
    "config": {
      "method": config.method,
      "dataset": config.data.name,
      "model": config.model,
      "batch_size": config.batch_size,
      "meta_batch_size": config.meta.batch_size,
      "num_epochs": config.num_epochs,
      "noise": f"{config.data.noise_type} {config.data.noise_rate}",
      "meta": {k: probe.plain(v) for k, v in config.meta.items()},
    },
    "rows": rows,
  }
  result["files"] = report.write(result, workdir)
  return result
