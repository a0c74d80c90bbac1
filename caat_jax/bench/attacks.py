"""Evaluation-attack timings (``python -m caat_jax.bench --attacks=...``).

Compile time and seconds per 1000 examples of each evaluation attack, on a
random-initialised model at eps 0 (the worst case: nothing breaks, every
attack spends its whole budget) or on a trained run's model
(``--attack_model_from``), compacted as the evaluation runs it or in fixed
batches (``--no_compact``).
"""

import statistics
import time

import jax
import numpy as np

from caat_jax import config_lib, data, evaluators, train


def attack_problem(
  config, model_name: str, num_points: int, *, source: str = "", eps: float | None = None
) -> dict:
  """What the attack bench attacks: ``logits_fn`` on one device (jitted),
  ``model_fn`` (the same, not jitted: for tracing inside an attack's
  program), ``x`` [n, H, W, C] float32, ``labels`` [n], ``eps``,
  ``num_classes``, ``model``.

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
    return dict(
      logits_fn=lambda z: apply(host, z),
      model_fn=lambda z: run.eval_model.apply(host, z, train=False),
      x=x,
      labels=np.asarray(run.dataset.test.labels[: len(x)], np.int32),
      eps=float(run.config.eval.eps if eps is None else eps),
      num_classes=run.dataset.num_classes,
      model=f"{run.config.model}@{step}",
      trained=True,
    )
  spec = data.spec(config.data.name)
  shape, num_classes = spec.image_shape, spec.num_classes
  kwargs = {"width": config.model_width} if model_name == "small_cnn" else {}
  model = models.get_model(
    model_name, num_classes=num_classes, mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1], **kwargs
  )
  x = jax.random.uniform(jax.random.PRNGKey(0), (num_points,) + shape)
  variables = model.init(jax.random.PRNGKey(1), x[:1], train=False)
  apply = jax.jit(lambda z: model.apply(variables, z, train=False))
  labels = np.asarray(jnp.argmax(apply(x), -1), np.int32)
  return dict(
    logits_fn=apply,
    model_fn=lambda z: model.apply(variables, z, train=False),
    x=np.asarray(x),
    labels=labels,
    eps=0.0 if eps is None else float(eps),
    num_classes=num_classes,
    model=model_name,
    trained=False,
  )


def _min_bucket(batch_size: int) -> int:
  """The smallest compacted bucket: batch / 8, at least 8 (fewer shapes to compile)."""
  return min(batch_size, max(batch_size // 8, 8))


def bench_attack(
  config,
  problem: dict,
  attack: str,
  batch_size: int,
  *,
  compact: bool = True,
  cache: dict | None = None,
  repeats: int = 1,
  pack: str = "auto",
) -> dict:
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
  from caat_jax.models import layers

  logits_fn, x, labels, eps = (problem[k] for k in ("logits_fn", "x", "labels", "eps"))
  n = len(labels)
  keys = np.asarray(evaluators.named_attacks.aa_keys(np.arange(n)))
  clean = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)) == labels
  family = attack in evaluators.AA_FAMILY
  # The attacks' loops compute convs as the evaluation's runner does.
  loop_fn = lambda name: layers.traced_with_conv_impl(
    problem["model_fn"], evaluators.ensemble.attack_conv_impl(name)
  )
  names = evaluators.named_attacks.ensemble_attacks(attack) if family else ()
  options = evaluators.named_attacks.ensemble_options(attack) if family else {}
  opt_key = compact_lib.options_key(options)
  compile_s = 0.0
  if family and compact:
    cache = {} if cache is None else cache
    for a in names:  # one runner per attack: each traces its own conv form
      if ("runner", a, opt_key) not in cache:
        cache["runner", a, opt_key] = compact_lib.local_runner(loop_fn(a), options)
    runner = lambda name, *args: cache["runner", name, opt_key](name, *args)
    sizes = compact_lib.bucket_sizes(
      batch_size, _min_bucket(batch_size), ratio=compact_lib.bucket_ratio(pack)
    )
    t = time.perf_counter()
    for name in names:  # compile each (attack, bucket) once, on inactive points
      for size in sizes:
        if (name, size, opt_key) not in cache:
          idx = np.zeros(size, int)
          runner(
            name,
            x[idx],
            labels[idx],
            np.full(size, eps, np.float32),
            keys[idx],
            np.zeros(size, bool),
            np.array([0, 1], np.int32),
          )
          cache[name, size, opt_key] = True
    compile_s = time.perf_counter() - t

    def run_once():
      _, robust, _, stats = compact_lib.autoattack_compact(
        runner,
        x,
        labels,
        eps=eps,
        keys=keys,
        clean_correct=clean,
        num_classes=problem["num_classes"],
        attacks=names,
        options=options,
        batch_size=batch_size,
        min_size=_min_bucket(batch_size),
        pack=pack,
      )
      return (
        robust,
        sum(v["slots"] for v in stats.values()),
        sum(v["calls"] for v in stats.values()),
      )
  else:

    def fn(x, y, k, active):
      e = jnp.full((x.shape[0],), eps)
      if not family:
        x_adv = attacks.pgd(
          logits_fn,
          x,
          y,
          eps=e,
          step_size=e + 2 / 255,
          num_steps=evaluators.pgd_steps(attack),
          keys=k,
          unroll=train.resolve_unroll(config.attack.unroll),
        )
        return active & (jnp.argmax(logits_fn(x_adv), -1) == y)
      if len(names) > 1:  # an ensemble in one program: one conv form for all its attacks
        return attacks.run_autoattack(
          loop_fn("autoattack"), x, y, eps=e, keys=k, attacks=names, options=options
        )[0].robust
      return (
        active
        & attacks.run_attack(
          attack,
          loop_fn(attack),
          x,
          y,
          eps=e,
          keys=aa_lib.stage_keys(k, 0),
          active=active,
          **options.get(attack, {}),
        ).robust
      )

    chunks = [np.arange(s, s + batch_size) % n for s in range(0, n, batch_size)]
    args = lambda idx: (x[idx], labels[idx], keys[idx], clean[idx])
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args(chunks[0])).compile()
    compile_s = time.perf_counter() - t
    # Every run (restart, target) of every attack carries the whole batch.
    fixed_slots = (
      len(chunks)
      * batch_size
      * max(sum(aa_lib.num_runs(a, problem["num_classes"], options.get(a)) for a in names), 1)
    )

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
  return {
    "model": problem["model"],
    "attack": attack,
    "batch": batch_size,
    "points": n,
    "eps": eps,
    "compact": bool(family and compact),
    "compile_s": compile_s,
    "s_per_1000": run_s * 1000.0 / n,
    "first_s_per_1000": times[0] * 1000.0 / n,
    "repeats": len(times),
    "slots": int(slots),
    "calls": int(calls),
    "pack": compact_lib.resolve_pack(pack) if family and compact else "fixed",
    "broken": int(np.sum(clean & ~robust)),
  }


def run_attack_bench(
  config,
  attack_names,
  model_names,
  batch_size,
  on_row=None,
  *,
  source: str = "",
  eps: float | None = None,
  num_points: int = 0,
  compact: bool = True,
  repeats: int = 1,
  pack: str = "auto",
) -> dict:
  """``bench_attack`` for every (model, attack); ``on_row(row)`` as each ends.
  ``source``: a trained run's workdir (its model replaces ``model_names``)."""
  rows = []
  for m in [""] if source else model_names:
    problem = attack_problem(config, m, num_points or batch_size, source=source, eps=eps)
    cache = {}
    for a in attack_names:
      rows.append(
        bench_attack(
          config, problem, a, batch_size, compact=compact, cache=cache, repeats=repeats, pack=pack
        )
      )
      if on_row is not None:
        on_row(rows[-1])
  return {
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "dataset": config.data.name,
    "source": source,
    "rows": rows,
  }


_ATTACK_HEAD = (
  f"{'model':<16} {'attack':<15} {'pack':>7} {'points':>6} {'batch':>5} "
  f"{'eps':>6} {'compile s':>9} {'s / 1000 ex':>11} {'first':>9} {'slots':>6} "
  f"{'calls':>5} {'broken':>6}"
)


def format_attack_row(r: dict) -> str:
  return (
    f"{r['model']:<16} {r['attack']:<15} {r['pack']:>7} {r['points']:>6} "
    f"{r['batch']:>5} {r['eps']:6.3f} {r['compile_s']:9.2f} {r['s_per_1000']:11.2f} "
    f"{r['first_s_per_1000']:9.2f} {r['slots']:>6} {r['calls']:>5} {r['broken']:>6}"
  )


def attack_table_head(dataset: str, source: str = "") -> str:
  what = (
    f"trained model from {source}: 'broken' = clean-correct points the attack broke"
    if source
    else "worst case: eps = 0, nothing may break"
  )
  return (
    f"attacks ({what}) on {dataset}-shaped data, 1 x {jax.devices()[0].device_kind}; "
    "'slots' = examples computed per attack, padding included\n"
    f"{_ATTACK_HEAD}\n" + "-" * len(_ATTACK_HEAD)
  )


def format_attack_rows(result: dict) -> str:
  return "\n".join(
    [attack_table_head(result["dataset"], result.get("source", ""))]
    + [format_attack_row(r) for r in result["rows"]]
  )


def check_attack_args(names, model_names) -> None:
  """Rejects unknown attack or model names before anything compiles."""
  from caat_jax import models  # pylint: disable=g-import-not-at-top

  evaluators.check_names(names, "--attacks")
  for m in model_names:
    if m not in models.MODELS:
      raise config_lib.ConfigError(
        f"--attack_models: unknown model {m!r}; valid: {', '.join(models.MODELS)}"
      )
