"""Train-step timings (``python -m caat_jax.bench --config=configs/digits.py``).

For each method in ``config.bench.methods`` it builds the real train step
(same model, batch, attack settings, parallel wrapper), on synthetic data of
the configured dataset's shape, and reports:

* compile time (lower + compile of the wrapped step),
* median steady-state step time over ``bench.num_steps`` steps (each step
  waited for with ``block_until_ready``), images per second,
* the step time as a ratio to PGD-AT's, beside the ratio docs/method.md §11's
  forward-pass accounting allows (``bound``), and measured / bound,
* peak memory: XLA's analysis of the compiled step (temp + argument +
  output bytes, ``bench.xla``) on every backend, and the allocator's peak
  (``memory_stats()['peak_bytes_in_use']``) where the backend reports one (GPU);
* XLA's FLOP count of the compiled step (``cost_analysis()``, one device's
  program), FLOPs per image, achieved FLOP/s and MFU against the device
  kind's published peak for ``config.dtype`` (``bench.peaks``; none on a CPU).

Output: a table on stdout and ``--out`` (JSON). Speed goals live here, not in
tests.
"""

import statistics
import time

import jax

from caat_jax import config_lib, methods, pipeline, train
from caat_jax.bench import peaks, xla


def forward_units(config) -> float:
  """Forward-pass units F per training example of one step of
  ``config.method`` (docs/method.md §11), as the method itself accounts for it."""
  return methods.get(config.method).cost(config)


def bench_config(config, entry: str):
  """The config one ``config.bench.methods`` entry benches.

  ``entry`` is a method name, optionally followed by overrides spelled as on
  the command line: ``'meta_caat --config.meta.variant=nested_grad'``,
  ``'pgd_at --config.attack.unroll=false'``. Raises ``ConfigError`` naming the
  entry for an unknown method or key or a bad value.
  """
  method, *overrides = entry.split()
  try:
    cfg = config_lib.apply_overrides(
      config, [f"method={method}", "suite=()", f"batch_size={config.bench.batch_size}", *overrides]
    )
    config_lib.validate(cfg)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"bench entry {entry!r}: {e}") from None
  return cfg


def bench_method(config, name: str) -> dict:
  """Compile time, median step time and images/s of one method's train step.

  ``name``: a ``config.bench.methods`` entry, see ``bench_config``.
  """
  cfg = bench_config(config, name)
  run = train.Run(cfg, dataset=pipeline.synthetic_dataset(cfg.data.name, 4 * cfg.batch_size))
  state = run.parallel.replicate(run.init_state())
  batches = [run.parallel.shard(b) for b in run.input.batches(epoch=0)]
  t = time.perf_counter()
  compiled = run.train_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t
  times = []
  for i in range(config.bench.num_steps + 2):  # 2 warm-up steps
    t = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    if i >= 2:
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = xla.xla_flops(compiled)  # one device's program
  devices = jax.device_count()
  return {
    "method": name,
    "compile_s": compile_s,
    "step_s": step_s,
    "images_per_s": cfg.batch_size / step_s,
    "units_F": forward_units(cfg),
    "peak_memory_bytes": xla.device_peak_bytes(),
    "xla_peak_bytes": xla.xla_peak_bytes(compiled),
    "xla_flops": flops,
    "dtype": cfg.dtype,
    # against the hardware: XLA's FLOPs per image and per second, and MFU
    # against the device kind's published peak (bench.peaks; None on a CPU)
    "flops_per_image": None if flops is None else flops * devices / cfg.batch_size,
    "achieved_flops_per_s": None if flops is None else flops / step_s,
    "mfu": peaks.mfu(flops, step_s, str(jax.devices()[0].device_kind), cfg.dtype),
  }


def run_bench(config, on_row=None) -> dict:
  """``bench_method`` for every ``config.bench.methods`` entry, ratios to
  ``config.bench.reference``; ``on_row(row)`` as each ends."""
  for name in config.bench.methods:  # every entry checked before any compiles
    bench_config(config, name)
  rows = []
  for m in config.bench.methods:
    rows.append(bench_method(config, m))
    if on_row is not None:
      on_row(rows[-1])
  ref = next((r for r in rows if r["method"] == config.bench.reference), None)
  for r in rows:
    if ref is not None:
      r["ratio_to_pgd_at"] = r["step_s"] / ref["step_s"]
      r["bound_ratio"] = r["units_F"] / ref["units_F"]
      r["measured_over_bound"] = r["ratio_to_pgd_at"] / r["bound_ratio"]
  return {
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "num_devices": jax.device_count(),
    "model": config.model,
    "dataset": config.data.name,
    "batch_size": config.bench.batch_size,
    "attack_steps": config.attack.num_steps,
    "unroll": train.resolve_unroll(config.attack.unroll),
    "parallel": config.parallel.backend,
    "rows": rows,
  }


def format_rows(result: dict) -> str:
  head = (
    f"{'method':<16} {'compile s':>9} {'step ms':>9} {'img/s':>9} "
    f"{'x pgd_at':>8} {'bound':>6} {'meas/bnd':>8} {'peak MiB':>9} {'GFLOP':>8} {'MFU %':>6}"
  )
  lines = [
    f"{result['model']} on {result['dataset']}-shaped data, batch "
    f"{result['batch_size']}, {result['num_devices']} x {result['device']} "
    f"({result['parallel']}, unroll={result['unroll']})",
    head,
    "-" * len(head),
  ]
  for r in result["rows"]:
    lines.append(
      f"{r['method']:<16} {r['compile_s']:9.2f} {1e3 * r['step_s']:9.1f} "
      f"{r['images_per_s']:9.1f} {r.get('ratio_to_pgd_at', float('nan')):8.2f} "
      f"{r.get('bound_ratio', float('nan')):6.2f} "
      f"{r.get('measured_over_bound', float('nan')):8.2f} "
      f"{_mib(r):>9} {_gflop(r):>8} {_mfu(r):>6}"
    )
  return "\n".join(lines)


def _mib(r: dict) -> str:
  """The allocator's peak where there is one (GPU), else XLA's analysis."""
  b = r.get("peak_memory_bytes") or r.get("xla_peak_bytes")
  return "-" if b is None else f"{b / 2**20:.1f}"


def _gflop(r: dict) -> str:
  f = r.get("xla_flops")
  return "-" if f is None else f"{f / 1e9:.3f}"


def _mfu(r: dict) -> str:
  m = r.get("mfu")
  return "-" if m is None else f"{100 * m:.1f}"
