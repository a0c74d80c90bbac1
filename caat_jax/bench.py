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

from caat_jax import config_lib, data, train

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

IMAGE_SHAPES = {"digits": ((8, 8, 1), 10), "cifar10": ((32, 32, 3), 10),
                "svhn": ((32, 32, 3), 10)}


def forward_units(config) -> float:
  """Cost of one step per training example in forward-pass units F (SPEC 11).

  An attack step ~2F, a forward ~1F, a training forward + backward ~3F per
  input batch; a JVP ~2F per input batch; reverse-mode through a gradient
  (second order) ~6F per input batch. Meta costs assume the meta batch is as
  large as the batch (scaled by m / n otherwise) and are divided by
  ``meta.interval``.
  """
  method, k = config.method, config.attack.num_steps
  attack = 2.0 * k
  if method == "natural":
    return 3.0
  if method == "pgd_at":
    return attack + 3.0
  if method in ("trades", "frl", "reinforce_caat"):
    # Reinforce-CAAT: one fused attack pass, as TRADES; its strategy net is
    # an MLP on six features per example, negligible against F.
    return attack + 1.0 + 6.0
  if method == "meta_caat":
    base = 2 * attack + 1.0 + 9.0  # adv + anti attacks, clean forward, real update
    if config.caat.bound == "grad":
      base += 4.0  # two input gradients at the start point
    if config.caat.direction != "combined":
      return base
    objective = {"clean_ce": 3.0, "robust": attack + 1.0 + 6.0,
                 "official": 2 * attack + 1.0 + 9.0}[config.meta.objective]
    lookahead = 9.0  # training gradient over clean, adv and anti inputs
    variant = config.meta.variant
    if variant == "jvp":
      meta_part = lookahead + objective + 6.0  # + JVP over the 3 inputs
    elif variant == "first_order":
      meta_part = objective + 6.0
    elif variant == "nested_grad":
      meta_part = lookahead + objective + 18.0  # + reverse through the gradient
    elif variant == "k_step":
      meta_part = config.meta.k * (lookahead + 18.0) + objective
    else:
      raise KeyError(f"no cost model for meta variant {variant!r}; add one to bench")
    meta_part *= config.meta.batch_size / config.batch_size
    return base + meta_part / config.meta.interval
  raise KeyError(f"no cost model for method {method!r}; add one to bench.forward_units")


def synthetic_dataset(config, num_examples: int) -> data.Dataset:
  """Random data of the configured dataset's shape (no download needed)."""
  shape, num_classes = IMAGE_SHAPES[config.data.name]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples,) + shape, dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  split = data.ArraySplit(images=images, labels=labels, clean_labels=labels,
                          source_index=np.arange(num_examples))
  return data.Dataset(
      name=config.data.name, num_classes=num_classes, image_shape=shape,
      train=split, meta=split, test=split, mean=(0.5,) * shape[-1],
      std=(0.25,) * shape[-1], augment="crop_flip" if shape[0] == 32 else "none")


def _peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _typed(key: str, old, text: str):
  """``text`` as the type of the config value it replaces."""
  if isinstance(old, bool):
    if text.lower() not in ("true", "false"):
      raise config_lib.ConfigError(f"bench entry: {key}={text!r}: expected true or false")
    return text.lower() == "true"
  try:
    return type(old)(text)
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(
        f"bench entry: {key}={text!r}: expected a value of type {type(old).__name__}") from e


def bench_config(config, name: str):
  """The config one ``config.bench.methods`` entry benches.

  ``name`` is a method, optionally with overrides in brackets:
  ``meta_caat[jvp]`` (a meta-gradient variant, i.e. ``meta.variant=jvp``) or
  ``pgd_at[attack.unroll=false]`` (dotted keys, comma-separated). Raises
  ``ConfigError`` naming the entry for an unknown key or a bad value.
  """
  method, bracket, rest = name.partition("[")
  if bracket and not rest.endswith("]"):
    raise config_lib.ConfigError(f"bench entry {name!r}: missing ']'")
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method = method
    cfg.batch_size = config.bench.batch_size
    cfg.suite = ()
  for item in filter(None, rest[:-1].split(",")):
    key, eq, text = item.partition("=")
    if not eq:  # a bare word is a meta-gradient variant
      key, text = "meta.variant", key
    key = key.strip()
    try:
      old = config_lib.get_dotted(cfg, key)
    except (KeyError, AttributeError) as e:
      raise config_lib.ConfigError(f"bench entry {name!r}: no config key {key!r}") from e
    config_lib.set_dotted(cfg, key, _typed(key, old, text.strip()))
  try:
    config_lib.validate(cfg)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"bench entry {name!r}: {e}") from e
  return cfg


def bench_method(config, name: str) -> dict:
  """Compile time, median step time and images/s of one method's train step.

  ``name``: see ``bench_config``.
  """
  cfg = bench_config(config, name)
  run = train.Run(cfg, dataset=synthetic_dataset(cfg, 4 * cfg.batch_size))
  state = run.parallel.replicate(run.init_state())
  batches = [run.parallel.shard(b) for b in run.batches(epoch=0)]
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
  ref = next((r for r in rows if r["method"] == "pgd_at"), None)
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
  shape, num_classes = IMAGE_SHAPES[config.data.name]
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
      steps = config_lib.parse_eval_attack(attack)
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
      config_lib.parse_eval_attack(a)
    except config_lib.ConfigError:
      raise config_lib.ConfigError(
          f"--attacks: unknown attack {a!r}; valid: pgd<k>, {', '.join(valid)}") from None
  for m in model_names:
    if m not in models.MODELS:
      raise config_lib.ConfigError(
          f"--attack_models: unknown model {m!r}; valid: {', '.join(models.MODELS)}")


def main(argv):
  del argv
  names = [a.strip() for a in FLAGS.attacks.split(",") if a.strip()]
  model_names = [m.strip() for m in FLAGS.attack_models.split(",") if m.strip()]
  try:
    check_attack_args(names, model_names)
    result = {} if FLAGS.skip_train_bench else run_bench(FLAGS.config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  if result:
    print(format_rows(result))
  if names:  # rows print as they finish: a PreAct-ResNet-18 on a CPU takes hours
    print(attack_table_head(FLAGS.config.data.name), flush=True)
    result["attacks"] = run_attack_bench(
        FLAGS.config, names, model_names or [FLAGS.config.model],
        FLAGS.attack_batch or FLAGS.config.bench.batch_size,
        on_row=lambda r: print(format_attack_row(r), flush=True))
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
