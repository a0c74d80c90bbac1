"""Per-class robust evaluation (SPEC section 9, the paper's Eqs. 45-48).

For each class c: natural error, robust error under an attack (a test point
counts as robust only if it is classified correctly both clean and under the
attack, so robust >= natural), and boundary error = robust - natural. Each is
reported as the class average and the worst class.

PGD-k here is CE ascent from a uniform start in the ball, step ``eval.step_size``;
the start noise of test point i is keyed by i, so results do not depend on the
batch size or the number of devices.
"""

import functools
import json
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, config_lib, losses
from caat_jax.data.augment import to_float01
from caat_jax.parallel import REPLICATED, SHARDED

_EVAL_SEED = 1234  # fixed: every run is attacked with the same start noise


def eval_fn(variables, batch, *, model, eps: float, step_size: float,
            attack_steps: Mapping[str, int], unroll: bool):
  """Per-device evaluation of one batch.

  Args:
    variables: classifier ``{'params', 'batch_stats'}``.
    batch: ``image`` [b, H, W, C], ``label`` [b], ``index`` [b] (position in the
      evaluated split; keys the attack's start noise).
    model: the classifier module (inference mode is used).
    eps, step_size: L-inf bound and PGD step in pixel units.
    attack_steps: attack name -> number of PGD steps, e.g. {'pgd20': 20}.
    unroll: unroll the PGD loop.
  Returns:
    dict name -> bool [b]: ``natural`` (clean correct) and, per attack,
    correct on clean *and* perturbed input.
  """
  x, y = to_float01(batch["image"]), batch["label"]
  logits_fn = lambda z: model.apply(variables, z, train=False)
  nat = losses.correct(logits_fn(x), y)
  out = {"natural": nat}
  b = x.shape[0]
  for name, k in attack_steps.items():
    base_key = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), k)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(batch["index"])
    x_adv = attacks.pgd(
        logits_fn, x, y, eps=jnp.full((b,), eps), step_size=jnp.full((b,), step_size),
        num_steps=k, keys=keys, start="uniform", unroll=unroll)
    out[name] = nat & losses.correct(logits_fn(x_adv), y)
  return out


def make_eval_step(parallel, model, eval_cfg, unroll: bool):
  """``step(replicated_variables, sharded_batch) -> sharded dict of bool [B]``."""
  steps = {name: config_lib.parse_eval_attack(name) for name in eval_cfg.attacks}
  fn = functools.partial(eval_fn, model=model, eps=float(eval_cfg.eps),
                         step_size=float(eval_cfg.step_size), attack_steps=steps,
                         unroll=unroll)
  return parallel.wrap(fn, (REPLICATED, SHARDED), SHARDED)


def run_eval(parallel, eval_step, variables, split, *, batch_size: int,
             num_examples: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
  """Evaluates ``split`` (an ArraySplit) in global batches of ``batch_size``.

  The batch size is rounded up to a multiple of the device count and the
  last batch is padded (the padding is dropped afterwards) so that every
  batch has one shape and one compilation serves all. Each process feeds only
  its slice of every global batch.
  Returns dict name -> bool [N] plus ``label`` [N].
  """
  n = len(split) if not num_examples else min(num_examples, len(split))
  # Round up to a multiple of the device count; the padding is dropped below.
  batch_size = -(-batch_size // parallel.num_devices) * parallel.num_devices
  results: dict[str, list[np.ndarray]] = {}
  starts = range(0, n, batch_size)
  if progress:
    from tqdm import tqdm
    starts = tqdm(starts, desc="eval", leave=False, disable=jax.process_index() != 0)
  for s in starts:
    idx = np.arange(s, s + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {"image": split.images[idx], "label": split.labels[idx].astype(np.int32),
             "index": idx.astype(np.int32)}
    batch = host_slice(batch)
    out = parallel.gather(eval_step(variables, parallel.shard(batch)))
    for k, v in out.items():
      results.setdefault(k, []).append(np.asarray(v)[valid])
  merged = {k: np.concatenate(v) for k, v in results.items()}
  merged["label"] = np.asarray(split.labels[:n])
  return merged


def host_slice(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous slice of a global batch."""
  p, count = jax.process_index(), jax.process_count()
  if count == 1:
    return dict(batch)
  return {k: np.array_split(v, count)[p] for k, v in batch.items()}


def per_class_error(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Error rate (%) per class: 100 * (1 - mean correct) over that class's points.

  correct: bool [N]; labels: int [N] -> float [num_classes] (nan for a class
  with no points).
  """
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  right = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return 100.0 * (1.0 - right / counts)


def report(outcomes: Mapping[str, np.ndarray], num_classes: int, *, attack: str,
           eps: float, method: str = "", dataset: str = "", model: str = "") -> dict:
  """SPEC section 9's result document for one attack (Eqs. 45-48).

  avg = mean over classes of the per-class error (classes weigh equally, even
  with unequal class sizes); worst = max over classes.
  """
  labels = outcomes["label"]
  nat = per_class_error(outcomes["natural"], labels, num_classes)
  rob = per_class_error(outcomes[attack], labels, num_classes)
  bnd = rob - nat
  per_class = {"natural": nat, "boundary": bnd, "robust": rob}
  return {
      "method": method, "dataset": dataset, "model": model, "attack": attack,
      "eps": float(eps), "num_examples": int(labels.shape[0]),
      "avg": {k: float(np.nanmean(v)) for k, v in per_class.items()},
      "worst": {k: float(np.nanmax(v)) for k, v in per_class.items()},
      "per_class": {k: [round(float(e), 4) for e in v] for k, v in per_class.items()},
  }


def format_table(docs: Sequence[dict], label_key: str = "attack") -> str:
  """A plain-text table: one row per document, avg and worst of each error."""
  head = (f"{label_key:<14} {'nat avg':>8} {'nat wst':>8} {'bnd avg':>8} "
          f"{'bnd wst':>8} {'rob avg':>8} {'rob wst':>8}")
  lines = [head, "-" * len(head)]
  for d in docs:
    a, w = d["avg"], d["worst"]
    lines.append(
        f"{str(d[label_key]):<14} {a['natural']:8.2f} {w['natural']:8.2f} "
        f"{a['boundary']:8.2f} {w['boundary']:8.2f} {a['robust']:8.2f} {w['robust']:8.2f}")
  return "\n".join(lines)


def format_per_class(doc: dict) -> str:
  """Per-class natural / boundary / robust errors (%) of one document."""
  pc = doc["per_class"]
  lines = [f"per class ({doc['attack']}, eps={doc['eps']:.4f}):",
           f"{'class':>5} {'natural':>8} {'boundary':>9} {'robust':>8}"]
  for c, (n, b, r) in enumerate(zip(pc["natural"], pc["boundary"], pc["robust"])):
    lines.append(f"{c:>5} {n:8.2f} {b:9.2f} {r:8.2f}")
  return "\n".join(lines)


def write_json(path: str, obj) -> None:
  """Writes atomically (temp file + rename): a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# -----------------------------------------------------------------------------
# AutoAttack evaluation and the command line:
#   python -m caat_jax.evaluate --workdir=DIR [--attacks=pgd20,pgd100,autoattack]
# -----------------------------------------------------------------------------

AUTOATTACK = "autoattack"
_AA_SEED_TAG = 0xAA  # folded into _EVAL_SEED: AutoAttack's keys differ from PGD's


def autoattack_eval_fn(variables, batch, *, model, eps: float, options=None):
  """Per-device AutoAttack ("standard") on one batch.

  Args:
    variables: classifier ``{'params', 'batch_stats'}``.
    batch: ``image`` [b, H, W, C], ``label`` [b], ``index`` [b] (keys the
      attacks' randomness, so results do not depend on batch or device count).
    model: the classifier module (inference mode is used).
    eps: L-inf bound in pixel units.
    options: per-attack hyper-parameter overrides (default: the reference's).
  Returns:
    dict of bool [b]: ``natural``, ``autoattack`` (robust to the ensemble)
    and ``autoattack/<attack>`` (robust after each attack, cumulative).
  """
  x, y = to_float01(batch["image"]), batch["label"]
  logits_fn = lambda z: model.apply(variables, z, train=False)
  base = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), _AA_SEED_TAG)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch["index"])
  result, stages = attacks.run_autoattack(logits_fn, x, y, eps=eps, keys=keys, options=options)
  out = {"natural": stages.pop("clean"), AUTOATTACK: result.robust}
  out.update({f"{AUTOATTACK}/{k}": v for k, v in stages.items()})
  return out


def make_autoattack_step(parallel, model, eps: float, options=None):
  """``step(replicated_variables, sharded_batch) -> sharded dict of bool [B]``."""
  fn = functools.partial(autoattack_eval_fn, model=model, eps=float(eps), options=options)
  return parallel.wrap(fn, (REPLICATED, SHARDED), SHARDED)


def load_run(workdir: str, checkpoint: str | None = None, step: int | None = None,
             overrides: Mapping[str, object] | None = None):
  """Rebuilds a run from its checkpoint and stored config.

  Args:
    workdir: the training run's directory.
    checkpoint: another run directory or checkpoints/ directory to read instead.
    step: the step to restore (default the newest readable).
    overrides: ``{'eval.batch_size': 500, ...}`` applied to the stored config
      (evaluation-only keys).
  Returns:
    (run, replicated variables, step): a ``train.Run`` built from the
    checkpoint's config and the classifier in its parallel layout.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from caat_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from caat_jax import train  # pylint: disable=g-import-not-at-top
  directory = ckpt_lib.resolve_directory(checkpoint or workdir)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  try:
    steps = [step] if step is not None else ckpt.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    stored, errors = None, []
    for s in steps:
      try:
        stored, step = ckpt.restore_config(s), s
        break
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {s}: {type(e).__name__}: {e}")
    if stored is None:
      raise ckpt_lib.CheckpointError(f"no readable config in {directory}: {'; '.join(errors)}")
    config = ml_collections.ConfigDict(stored)
    with config.unlocked():
      config.init_from = ""  # the checkpoint holds the classifier already
      for key, value in (overrides or {}).items():
        config_lib.set_dotted(config, key, value)
    run = train.Run(config)
    restored = ckpt.restore(run.init_state(), step=step, move_aside=False)
  finally:
    ckpt.close()
  state, step = restored
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return run, run.parallel.replicate(variables), step


def eps_sweep_check(run, variables, *, eps: float, num_examples: int, batch_size: int,
                    factors: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
                    large_eps: float = 1.0, num_steps: int = 20) -> dict:
  """Sanity check: PGD robust accuracy against eps.

  PGD-``num_steps`` with step ``2.5 eps / num_steps`` at ``eps * factors`` and
  at ``large_eps`` (1.0 allows any image). A sound evaluation sees accuracy
  fall as eps grows and reach 0 at the large eps; otherwise suspect gradient
  masking. Returns {'eps': [...], 'accuracy': [...], 'monotone', 'zero_at_large'}.
  """
  levels = sorted({float(eps) * f for f in factors} | {float(large_eps)})
  acc = []
  name = f"pgd{num_steps}"
  for e in levels:
    step = run.eval_step_for((name,), e, max(2.5 * e / num_steps, 1e-8))
    out = run_eval(run.parallel, step, variables, run.dataset.test, batch_size=batch_size,
                   num_examples=num_examples)
    acc.append(100.0 * float(np.mean(out[name])))
  return {"attack": f"pgd{num_steps} (step 2.5 eps / {num_steps})", "eps": levels,
          "accuracy": acc,
          "monotone": bool(all(a >= b - 1e-9 for a, b in zip(acc, acc[1:]))),
          "zero_at_large": acc[-1] == 0.0}


def compare_check(outcomes: Mapping[str, np.ndarray], strong: str = AUTOATTACK,
                  weak: str = "pgd20") -> dict:
  """Sanity check: the ensemble is never weaker than PGD-20 on the same points.

  Reports both robust accuracies and the points robust to ``strong`` but
  broken by ``weak`` (each is a point where the ensemble missed an attack).
  """
  s, w = outcomes[strong], outcomes[weak]
  return {"strong": strong, "weak": weak,
          "robust_accuracy": {strong: 100.0 * float(np.mean(s)), weak: 100.0 * float(np.mean(w))},
          "not_weaker": bool(np.mean(s) <= np.mean(w)),
          "points_missed": int(np.sum(s & ~w))}


def evaluate_checkpoint(workdir: str, attacks_to_run: Sequence[str], *,
                        checkpoint: str | None = None, num_examples: int | None = None,
                        batch_size: int | None = None, eps: float | None = None,
                        aa_options: Mapping[str, Mapping] | None = None,
                        sanity: bool = False, out_dir: str | None = None,
                        progress: bool = True) -> tuple[list[dict], dict]:
  """Restores a run, evaluates every attack on its test split, writes and prints.

  Args:
    workdir: the run directory (its checkpoints/ are read; results go here
      unless ``out_dir``).
    attacks_to_run: names, each 'pgd<k>' or 'autoattack'.
    checkpoint: read the checkpoint from here instead.
    num_examples, batch_size, eps: override the stored ``config.eval`` values
      (``num_examples`` 0 = the whole test split).
    aa_options: AutoAttack hyper-parameter overrides (tests only).
    sanity: also run the eps sweep (see ``eps_sweep_check``).
  Returns:
    (documents, sanity): one SPEC-9 document per attack (``eval_<attack>.json``)
    and the sanity-check results (``eval_sanity.json``).
  """
  overrides = {}
  if num_examples is not None:
    overrides["eval.num_examples"] = int(num_examples)
  if batch_size is not None:
    overrides["eval.batch_size"] = int(batch_size)
  if eps is not None:
    overrides["eval.eps"] = float(eps)
  for a in attacks_to_run:
    if a != AUTOATTACK:
      config_lib.parse_eval_attack(a)
  run, variables, step = load_run(workdir, checkpoint, overrides=overrides)
  c = run.config
  test = run.dataset.test
  kw = dict(batch_size=c.eval.batch_size, num_examples=c.eval.num_examples, progress=progress)
  outcomes: dict[str, np.ndarray] = {}
  pgd = [a for a in attacks_to_run if a != AUTOATTACK]
  if sanity and AUTOATTACK in attacks_to_run and "pgd20" not in pgd:
    pgd.append("pgd20")
  if pgd:
    step_fn = run.eval_step_for(tuple(pgd), c.eval.eps, c.eval.step_size)
    outcomes.update(run_eval(run.parallel, step_fn, variables, test, **kw))
  if AUTOATTACK in attacks_to_run:
    step_fn = make_autoattack_step(run.parallel, run.eval_model, c.eval.eps, aa_options)
    outcomes.update(run_eval(run.parallel, step_fn, variables, test, **kw))

  docs = []
  for a in attacks_to_run:
    d = report(outcomes, run.dataset.num_classes, attack=a, eps=c.eval.eps,
               method=c.method, dataset=c.data.name, model=c.model)
    d["step"] = int(step)
    if a == AUTOATTACK:
      d["stages"] = {k.split("/", 1)[1]: 100.0 * (1.0 - float(np.mean(v)))
                     for k, v in outcomes.items() if k.startswith(AUTOATTACK + "/")}
    docs.append(d)
  checks = {}
  if sanity:
    checks["eps_sweep"] = eps_sweep_check(
        run, variables, eps=c.eval.eps, num_examples=c.eval.num_examples,
        batch_size=c.eval.batch_size)
  if AUTOATTACK in outcomes and "pgd20" in outcomes:
    checks["autoattack_vs_pgd20"] = compare_check(outcomes)

  if jax.process_index() == 0:
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    for d in docs:
      write_json(os.path.join(out_dir, f"eval_{d['attack']}.json"), d)
    if checks:
      write_json(os.path.join(out_dir, "eval_sanity.json"), checks)
    print(f"\n{c.method} on {c.data.name} ({c.model}), step {step}, eps={c.eval.eps:.4f}, "
          f"{docs[0]['num_examples']} test points (errors in %):")
    print(format_table(docs))
    for d in docs:
      print()
      print(format_per_class(d))
      if "stages" in d:
        print("robust error (% of points) after each attack: " + ", ".join(
            f"{k} {v:.2f}" for k, v in d["stages"].items()))
    if checks:
      print("\nsanity checks:")
      if "eps_sweep" in checks:
        s = checks["eps_sweep"]
        print(f"  {s['attack']} accuracy (%) by eps: " + ", ".join(
            f"{e:.4f}: {a:.2f}" for e, a in zip(s["eps"], s["accuracy"])))
        print(f"  falls with eps: {s['monotone']}; 0 at eps={s['eps'][-1]}: {s['zero_at_large']}")
      if "autoattack_vs_pgd20" in checks:
        s = checks["autoattack_vs_pgd20"]
        print(f"  robust accuracy autoattack {s['robust_accuracy'][AUTOATTACK]:.2f} <= "
              f"pgd20 {s['robust_accuracy']['pgd20']:.2f}: {s['not_weaker']} "
              f"({s['points_missed']} points robust to autoattack but broken by pgd20)")
  return docs, checks


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  attacks_to_run = [a.strip() for a in f.attacks.split(",") if a.strip()]
  try:
    evaluate_checkpoint(
        f.workdir, attacks_to_run, checkpoint=f.checkpoint,
        num_examples=f.num_examples, batch_size=f.batch_size, eps=f.eps,
        sanity=f.sanity, out_dir=f.out_dir)
  except (FileNotFoundError, config_lib.ConfigError) as e:
    raise SystemExit(f"error: {e}") from e


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_string("checkpoint", None,
                      "Run directory or checkpoints/ directory to evaluate instead of "
                      "WORKDIR/checkpoints (results still go to --out_dir or WORKDIR).")
  flags.DEFINE_string("attacks", "pgd20,pgd100,autoattack",
                      "Comma-separated: pgd<k> (CE, uniform start, config eval.step_size) "
                      "and/or autoattack (standard version).")
  flags.DEFINE_integer("num_examples", None, "Test points (0 = all; default config.eval).")
  flags.DEFINE_integer("batch_size", None, "Global eval batch size (default config.eval).")
  flags.DEFINE_float("eps", None, "L-inf bound in pixel units (default config.eval.eps).")
  flags.DEFINE_bool("sanity", False,
                    "Also run the eps sweep sanity check (accuracy falls with eps, 0 at eps=1).")
  flags.DEFINE_string("out_dir", None, "Where to write eval_<attack>.json (default WORKDIR).")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
