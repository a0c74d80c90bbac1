"""Step-time benchmark: ``python -m caat_jax.bench --config=configs/digits.py``.

For each method in ``config.bench.methods`` it builds the real train step
(same model, batch, attack settings, parallel wrapper), on synthetic data of
the configured dataset's shape, and reports:

* compile time (lower + compile of the wrapped step),
* median steady-state step time over ``bench.num_steps`` steps (each step
  waited for with ``block_until_ready``), images per second,
* the step time as a ratio to PGD-AT's, beside the ratio docs/method.md §11's
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

from caat_jax import cli, config_lib, data, evaluators, methods, pipeline, train
from caat_jax.attacks.compact import PACKS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
flags.DEFINE_string(
    "attacks", "",
    "Also time evaluation attacks, seconds per 1000 examples: comma-separated from "
    "pgd<k>, apgd-ce, apgd-dlr, apgd-t, fab-t, square, autoattack, autoattack-rand. "
    "Default worst case: "
    "eps = 0 and labels = predictions, so no point is ever broken and every attack "
    "spends its whole budget (what a fully robust model costs). Empty: train steps only.")
flags.DEFINE_string("attack_model_from", "",
                    "Time the attacks on a trained run's model (its workdir) and its test "
                    "points with their labels, at its config.eval.eps, instead of the worst "
                    "case.")
flags.DEFINE_float("attack_eps", None, "L-inf bound for the timed attacks (default 0, or "
                   "the trained run's config.eval.eps).")
flags.DEFINE_integer("attack_points", 0, "Points to attack (default --attack_batch).")
flags.DEFINE_bool("no_compact", False,
                  "Time the AutoAttack family on fixed batches (every point through every "
                  "attack) instead of compacted on the points still robust.")
flags.DEFINE_enum("attack_pack", "auto", list(PACKS),
                  "How compaction fills its buckets: fewest padded slots, fewest calls, or "
                  "auto (slots on a CPU, calls on an accelerator).")
flags.DEFINE_integer("attack_repeats", 1,
                     "Run each timed attack this many times; > 1 reports the median of all "
                     "but the first (steady state) and the first apart ('first').",
                     lower_bound=1)
flags.DEFINE_string("attack_models", "",
                    "Models to time the attacks on, e.g. small_cnn,preact_resnet18 "
                    "(default config.model), on the config's dataset shape.")
flags.DEFINE_integer("attack_batch", 0, "Examples per timed attack call (default "
                     "config.bench.batch_size).")
flags.DEFINE_bool("skip_train_bench", False, "Only time the attacks.")
flags.mark_flags_as_required(["config"])

def forward_units(config) -> float:
  """Forward-pass units F per training example of one step of
  ``config.method`` (docs/method.md §11), as the method itself accounts for it."""
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


def attack_problem(config, model_name: str, num_points: int, *, source: str = "",
                   eps: float | None = None) -> dict:
  """What the attack bench attacks: ``logits_fn`` on one device, ``x``
  [n, H, W, C] float32, ``labels`` [n], ``eps``, ``num_classes``, ``model``.

  Without ``source``: a random-initialised ``model_name`` on random images of
  the configured dataset's shape, labels = its predictions, eps 0 unless
  given (the worst case: nothing can break, every attack spends its whole
  budget). With ``source`` (a trained run's workdir): its newest readable
  checkpoint's classifier (float32, inference mode) on the first
  ``num_points`` test points with their labels, at the run's ``eval.eps``
  unless given.
  """
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from caat_jax import evaluate, models
  from caat_jax.data.augment import to_float01
  if source:
    run, variables, step = evaluate.load_run(source)
    host = run.parallel.fetch(variables)
    apply = jax.jit(lambda v, z: run.eval_model.apply(v, z, train=False))
    x = np.asarray(to_float01(jnp.asarray(run.dataset.test.images[:num_points])))
    return dict(logits_fn=lambda z: apply(host, z), x=x,
                labels=np.asarray(run.dataset.test.labels[:len(x)], np.int32),
                eps=float(run.config.eval.eps if eps is None else eps),
                num_classes=run.dataset.num_classes,
                model=f"{run.config.model}@{step}", trained=True)
  spec = data.spec(config.data.name)
  shape, num_classes = spec.image_shape, spec.num_classes
  kwargs = {"width": config.model_width} if model_name == "small_cnn" else {}
  model = models.get_model(model_name, num_classes=num_classes, mean=(0.5,) * shape[-1],
                           std=(0.25,) * shape[-1], **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(0), (num_points,) + shape)
  variables = model.init(jax.random.PRNGKey(1), x[:1], train=False)
  apply = jax.jit(lambda z: model.apply(variables, z, train=False))
  labels = np.asarray(jnp.argmax(apply(x), -1), np.int32)
  return dict(logits_fn=apply, x=np.asarray(x), labels=labels,
              eps=0.0 if eps is None else float(eps), num_classes=num_classes,
              model=model_name, trained=False)


def _min_bucket(batch_size: int) -> int:
  """The smallest compacted bucket: batch / 8, at least 8 (fewer shapes to compile)."""
  return min(batch_size, max(batch_size // 8, 8))


def bench_attack(config, problem: dict, attack: str, batch_size: int, *,
                 compact: bool = True, cache: dict | None = None, repeats: int = 1,
                 pack: str = "auto") -> dict:
  """Compile time and seconds per 1000 examples of one evaluation attack on
  ``problem`` (:func:`attack_problem`), one device, the reference's
  hyper-parameters.

  The AutoAttack family runs as the evaluation runs it: compacted, buckets of
  ``batch_size`` down to ``batch_size / 8`` (at least 8) holding only the points still
  robust (every bucket size compiled first, on inactive points, and timed as
  compile time), filled as ``pack`` says (:func:`caat_jax.attacks.compact.plan`);
  ``compact=False`` times the fixed-batch path (every batch
  of ``batch_size`` carried through every attack). PGD always runs in fixed
  batches. ``cache`` shares compiled runners between calls on one problem.
  ``repeats`` > 1 runs the attack that many times and reports the median of
  all but the first as ``s_per_1000`` (the steady state: on a GPU a first
  run pays one-off costs the compile step does not, e.g. loop bodies the
  compile call never entered) and the first as ``first_s_per_1000``.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from caat_jax import attacks
  from caat_jax.attacks import autoattack as aa_lib
  from caat_jax.attacks import compact as compact_lib
  logits_fn, x, labels, eps = (problem[k] for k in ("logits_fn", "x", "labels", "eps"))
  n = len(labels)
  keys = np.asarray(evaluators.named_attacks.aa_keys(np.arange(n)))
  clean = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)) == labels
  family = attack in evaluators.AA_FAMILY
  names = evaluators.named_attacks.ensemble_attacks(attack) if family else ()
  options = evaluators.named_attacks.ensemble_options(attack) if family else {}
  opt_key = compact_lib.options_key(options)
  compile_s = 0.0
  if family and compact:
    cache = {} if cache is None else cache
    runner = cache.setdefault(("runner", opt_key), compact_lib.local_runner(logits_fn, options))
    sizes = compact_lib.bucket_sizes(batch_size, _min_bucket(batch_size))
    t = time.perf_counter()
    for name in names:  # compile each (attack, bucket) once, on inactive points
      for size in sizes:
        if (name, size, opt_key) not in cache:
          idx = np.zeros(size, int)
          runner(name, x[idx], labels[idx], np.full(size, eps, np.float32), keys[idx],
                 np.zeros(size, bool), np.array([0, 1], np.int32))
          cache[name, size, opt_key] = True
    compile_s = time.perf_counter() - t

    def run_once():
      _, robust, _, stats = compact_lib.autoattack_compact(
          runner, x, labels, eps=eps, keys=keys, clean_correct=clean,
          num_classes=problem["num_classes"], attacks=names, options=options,
          batch_size=batch_size, min_size=_min_bucket(batch_size), pack=pack)
      return robust, sum(v["slots"] for v in stats.values()), sum(
          v["calls"] for v in stats.values())
  else:
    def fn(x, y, k, active):
      e = jnp.full((x.shape[0],), eps)
      if not family:
        x_adv = attacks.pgd(logits_fn, x, y, eps=e, step_size=e + 2 / 255,
                            num_steps=evaluators.pgd_steps(attack), keys=k,
                            unroll=train.resolve_unroll(config.attack.unroll))
        return active & (jnp.argmax(logits_fn(x_adv), -1) == y)
      if len(names) > 1:  # an ensemble: autoattack, autoattack-rand
        return attacks.run_autoattack(logits_fn, x, y, eps=e, keys=k, attacks=names,
                                      options=options)[0].robust
      return active & attacks.run_attack(attack, logits_fn, x, y, eps=e,
                                         keys=aa_lib.stage_keys(k, 0), active=active,
                                         **options.get(attack, {})).robust

    chunks = [np.arange(s, s + batch_size) % n for s in range(0, n, batch_size)]
    args = lambda idx: (x[idx], labels[idx], keys[idx], clean[idx])
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args(chunks[0])).compile()
    compile_s = time.perf_counter() - t
    # Every run (restart, target) of every attack carries the whole batch.
    fixed_slots = len(chunks) * batch_size * max(
        sum(aa_lib.num_runs(a, problem["num_classes"], options.get(a)) for a in names), 1)

    def run_once():
      out = [np.asarray(jax.block_until_ready(compiled(*args(idx)))) for idx in chunks]
      return np.concatenate(out)[:n], fixed_slots, len(chunks)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    robust, slots, calls = run_once()
    times.append(time.perf_counter() - t)
  run_s = statistics.median(times[1:] or times)
  # Worst case: "broken" must be 0 (at eps = 0 no attack may change a
  # prediction; a nonzero count means an attack left the eps-ball, and the
  # timing is void). On a trained model it is the attack's success.
  return {"model": problem["model"], "attack": attack, "batch": batch_size, "points": n,
          "eps": eps, "compact": bool(family and compact), "compile_s": compile_s,
          "s_per_1000": run_s * 1000.0 / n, "first_s_per_1000": times[0] * 1000.0 / n,
          "repeats": len(times), "slots": int(slots), "calls": int(calls),
          "pack": compact_lib.resolve_pack(pack) if family and compact else "fixed",
          "broken": int(np.sum(clean & ~robust))}


def run_attack_bench(config, attack_names, model_names, batch_size, on_row=None, *,
                     source: str = "", eps: float | None = None, num_points: int = 0,
                     compact: bool = True, repeats: int = 1, pack: str = "auto") -> dict:
  """``bench_attack`` for every (model, attack); ``on_row(row)`` as each ends.
  ``source``: a trained run's workdir (its model replaces ``model_names``)."""
  rows = []
  for m in ([""] if source else model_names):
    problem = attack_problem(config, m, num_points or batch_size, source=source, eps=eps)
    cache = {}
    for a in attack_names:
      rows.append(bench_attack(config, problem, a, batch_size, compact=compact, cache=cache,
                               repeats=repeats, pack=pack))
      if on_row is not None:
        on_row(rows[-1])
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "dataset": config.data.name, "source": source, "rows": rows}


_ATTACK_HEAD = (f"{'model':<16} {'attack':<15} {'pack':>7} {'points':>6} {'batch':>5} "
                f"{'eps':>6} {'compile s':>9} {'s / 1000 ex':>11} {'first':>9} {'slots':>6} "
                f"{'calls':>5} {'broken':>6}")


def format_attack_row(r: dict) -> str:
  return (f"{r['model']:<16} {r['attack']:<15} {r['pack']:>7} {r['points']:>6} "
          f"{r['batch']:>5} {r['eps']:6.3f} {r['compile_s']:9.2f} {r['s_per_1000']:11.2f} "
          f"{r['first_s_per_1000']:9.2f} {r['slots']:>6} {r['calls']:>5} {r['broken']:>6}")


def attack_table_head(dataset: str, source: str = "") -> str:
  what = (f"trained model from {source}: 'broken' = clean-correct points the attack broke"
          if source else "worst case: eps = 0, nothing may break")
  return (f"attacks ({what}) on {dataset}-shaped data, 1 x {jax.devices()[0].device_kind}; "
          "'slots' = examples computed per attack, padding included\n"
          f"{_ATTACK_HEAD}\n" + "-" * len(_ATTACK_HEAD))


def format_attack_rows(result: dict) -> str:
  return "\n".join([attack_table_head(result["dataset"], result.get("source", ""))]
                   + [format_attack_row(r) for r in result["rows"]])


def check_attack_args(names, model_names) -> None:
  """Rejects unknown attack or model names before anything compiles."""
  from caat_jax import models  # pylint: disable=g-import-not-at-top
  evaluators.check_names(names, "--attacks")
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
    if FLAGS.attacks:
      check_attack_args(names, model_names)
    result = {} if FLAGS.skip_train_bench else run_bench(
        config, on_row=lambda r: print(  # rows as they end: a killed run keeps them
            f"{r['method']}: compile {r['compile_s']:.2f} s, step "
            f"{1e3 * r['step_s']:.1f} ms", flush=True))
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  if result:
    print(format_rows(result))
  if names:  # rows print as they finish: a PreAct-ResNet-18 on a CPU takes hours
    print(attack_table_head(config.data.name, FLAGS.attack_model_from), flush=True)
    result["attacks"] = run_attack_bench(
        config, names, model_names or [config.model],
        FLAGS.attack_batch or config.bench.batch_size,
        on_row=lambda r: print(format_attack_row(r), flush=True),
        source=FLAGS.attack_model_from, eps=FLAGS.attack_eps,
        num_points=FLAGS.attack_points, compact=not FLAGS.no_compact,
        repeats=FLAGS.attack_repeats, pack=FLAGS.attack_pack)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
