"""Step-time benchmark: ``python -m caat_jax.bench --config=configs/digits.py``.

For each method in ``config.bench.methods`` it builds the real train step
(same model, batch, attack settings, parallel wrapper), on synthetic data of
the configured dataset's shape, and reports:

* compile time (lower + compile of the wrapped step),
* median steady-state step time over ``bench.num_steps`` steps (each step
  waited for with ``block_until_ready``), images per second,
* the step time as a ratio to PGD-AT's, beside the ratio SPEC section 11's
  forward-pass accounting allows (``bound``), and measured / bound,
* peak device memory where the backend reports it.

Output: a table on stdout and ``--out`` (JSON). Speed goals live here, not in
tests.
"""

import json
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from caat_jax import cli, config_lib, data, evaluation, methods, pipeline, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
flags.DEFINE_string(
    "attacks", "",
    "Also time evaluation attacks, seconds per 1000 examples: comma-separated from "
    "pgd20, apgd-ce, apgd-t, fab-t, square, autoattack. Worst case: eps = 0 and "
    "labels = predictions, so no point is ever broken and every attack spends its "
    "whole budget (what a fully robust model costs). Empty: train steps only.")
flags.DEFINE_string("attack_models", "",
                    "Models to time the attacks on, e.g. small_cnn,preact_resnet18 "
                    "(default config.model), on the config's dataset shape.")
flags.DEFINE_integer("attack_batch", 0, "Examples per timed attack call (default "
                     "config.bench.batch_size).")
flags.DEFINE_bool("skip_train_bench", False, "Only time the attacks.")
flags.mark_flags_as_required(["config"])

def forward_units(config) -> float:
  """Forward-pass units F per training example of one step of
  ``config.method`` (SPEC 11), as the method itself accounts for it."""
  return methods.get(config.method).cost(config)


def _peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench_config(config, entry: str):
  """The config one ``config.bench.methods`` entry benches.

  ``entry`` is a method name, optionally followed by overrides spelled as on
  the command line: ``'meta_caat --config.meta.variant=nested_grad'``,
  ``'pgd_at --config.attack.unroll=false'``. Raises ``ConfigError`` naming the
  entry for an unknown method or key or a bad value.
  """
  method, *overrides = entry.split()
  try:
    cfg = config_lib.apply_overrides(config, [f"method={method}", "suite=()",
                                              f"batch_size={config.bench.batch_size}",
                                              *overrides])
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
  return {"method": name, "compile_s": compile_s, "step_s": step_s,
          "images_per_s": cfg.batch_size / step_s, "units_F": forward_units(cfg),
          "peak_memory_bytes": _peak_memory_bytes()}


def run_bench(config) -> dict:
  for name in config.bench.methods:  # every entry checked before any compiles
    bench_config(config, name)
  rows = [bench_method(config, m) for m in config.bench.methods]
  ref = next((r for r in rows if r["method"] == config.bench.reference), None)
  for r in rows:
    if ref is not None:
      r["ratio_to_pgd_at"] = r["step_s"] / ref["step_s"]
      r["bound_ratio"] = r["units_F"] / ref["units_F"]
      r["measured_over_bound"] = r["ratio_to_pgd_at"] / r["bound_ratio"]
  return {
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "num_devices": jax.device_count(), "model": config.model,
      "dataset": config.data.name, "batch_size": config.bench.batch_size,
      "attack_steps": config.attack.num_steps, "unroll": train.resolve_unroll(config.attack.unroll),
      "parallel": config.parallel.backend, "rows": rows,
  }


def format_rows(result: dict) -> str:
  head = (f"{'method':<16} {'compile s':>9} {'step ms':>9} {'img/s':>9} "
          f"{'x pgd_at':>8} {'bound':>6} {'meas/bnd':>8}")
  lines = [f"{result['model']} on {result['dataset']}-shaped data, batch "
           f"{result['batch_size']}, {result['num_devices']} x {result['device']} "
           f"({result['parallel']}, unroll={result['unroll']})", head, "-" * len(head)]
  for r in result["rows"]:
    lines.append(
        f"{r['method']:<16} {r['compile_s']:9.2f} {1e3 * r['step_s']:9.1f} "
        f"{r['images_per_s']:9.1f} {r.get('ratio_to_pgd_at', float('nan')):8.2f} "
        f"{r.get('bound_ratio', float('nan')):6.2f} "
        f"{r.get('measured_over_bound', float('nan')):8.2f}")
  return "\n".join(lines)


def bench_attack(config, model_name: str, attack: str, batch_size: int) -> dict:
  """Compile time and seconds per 1000 examples of one evaluation attack.

  Random-initialised ``model_name`` on random images of the configured
  dataset's shape, one device, the reference's hyper-parameters, worst case
  (see the ``--attacks`` flag): eps = 0, labels = the model's predictions.
  """
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from caat_jax import attacks, models
  spec = data.spec(config.data.name)
  shape, num_classes = spec.image_shape, spec.num_classes
  kwargs = {"width": config.model_width} if model_name == "small_cnn" else {}
  model = models.get_model(model_name, num_classes=num_classes, mean=(0.5,) * shape[-1],
                           std=(0.25,) * shape[-1], **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch_size,) + shape)
  variables = model.init(jax.random.PRNGKey(1), x[:1], train=False)
  logits_fn = lambda v: model.apply(variables, v, train=False)
  labels = jnp.argmax(logits_fn(x), -1)
  keys = jax.random.split(jax.random.PRNGKey(2), batch_size)
  eps = jnp.zeros((batch_size,))

  def fn(x, y, k):
    if attack.startswith("pgd"):
      steps = evaluation.pgd_steps(attack)
      x_adv = attacks.pgd(logits_fn, x, y, eps=eps, step_size=eps + 2 / 255, num_steps=steps,
                          keys=k, unroll=train.resolve_unroll(config.attack.unroll))
      return jnp.argmax(logits_fn(x_adv), -1) == y
    if attack == "autoattack":
      return attacks.run_autoattack(logits_fn, x, y, eps=eps, keys=k)[0].robust
    return attacks.run_attack(attack, logits_fn, x, y, eps=eps, keys=k).robust

  t = time.perf_counter()
  compiled = jax.jit(fn).lower(x, labels, keys).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(x, labels, keys))  # warm-up
  t = time.perf_counter()
  robust = jax.block_until_ready(compiled(x, labels, keys))
  run_s = time.perf_counter() - t
  # "broken" must be 0: at eps = 0 no attack may change a prediction (a
  # nonzero count means an attack left the eps-ball, and the timing is void).
  return {"model": model_name, "attack": attack, "batch": batch_size,
          "compile_s": compile_s, "s_per_1000": run_s * 1000.0 / batch_size,
          "broken": int(batch_size - np.sum(np.asarray(robust)))}


def run_attack_bench(config, attack_names, model_names, batch_size, on_row=None) -> dict:
  """``bench_attack`` for every (model, attack); ``on_row(row)`` as each ends."""
  rows = []
  for m in model_names:
    for a in attack_names:
      rows.append(bench_attack(config, m, a, batch_size))
      if on_row is not None:
        on_row(rows[-1])
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "dataset": config.data.name, "eps": 0.0, "rows": rows}


_ATTACK_HEAD = (f"{'model':<16} {'attack':<11} {'batch':>6} {'compile s':>9} "
                f"{'s / 1000 ex':>11} {'broken':>6}")


def format_attack_row(r: dict) -> str:
  return (f"{r['model']:<16} {r['attack']:<11} {r['batch']:>6} "
          f"{r['compile_s']:9.2f} {r['s_per_1000']:11.2f} {r['broken']:>6}")


def attack_table_head(dataset: str) -> str:
  return (f"attacks (worst case: eps = 0, nothing may break) on {dataset}-shaped data, "
          f"1 x {jax.devices()[0].device_kind}\n{_ATTACK_HEAD}\n" + "-" * len(_ATTACK_HEAD))


def format_attack_rows(result: dict) -> str:
  return "\n".join([attack_table_head(result["dataset"])]
                   + [format_attack_row(r) for r in result["rows"]])


def check_attack_args(names, model_names) -> None:
  """Rejects unknown attack or model names before anything compiles."""
  # pylint: disable=g-import-not-at-top
  from caat_jax import models
  from caat_jax.attacks import autoattack
  valid = ("autoattack",) + autoattack.ATTACKS
  for a in names:
    if a in valid:
      continue
    try:
      evaluation.pgd_steps(a)
    except config_lib.ConfigError:
      raise config_lib.ConfigError(
          f"--attacks: unknown attack {a!r}; valid: pgd<k>, {', '.join(valid)}") from None
  for m in model_names:
    if m not in models.MODELS:
      raise config_lib.ConfigError(
          f"--attack_models: unknown model {m!r}; valid: {', '.join(models.MODELS)}")


def main(argv):
  del argv
  config = cli.config_flag()
  names = [a.strip() for a in FLAGS.attacks.split(",") if a.strip()]
  model_names = [m.strip() for m in FLAGS.attack_models.split(",") if m.strip()]
  try:
    check_attack_args(names, model_names)
    result = {} if FLAGS.skip_train_bench else run_bench(config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  if result:
    print(format_rows(result))
  if names:  # rows print as they finish: a PreAct-ResNet-18 on a CPU takes hours
    print(attack_table_head(config.data.name), flush=True)
    result["attacks"] = run_attack_bench(
        config, names, model_names or [config.model],
        FLAGS.attack_batch or config.bench.batch_size,
        on_row=lambda r: print(format_attack_row(r), flush=True))
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
