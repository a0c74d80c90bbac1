"""Evaluate a trained run from its checkpoint (the command line):

  python -m caat_jax.evaluate --workdir=DIR [--attacks=pgd20,pgd100,autoattack,apgd-ce]
      [--version=standard|rand]

Restores the newest readable checkpoint and the run's stored config, runs
each attack over the test split with the run's parallel wrapper (the
evaluation library, ``caat_jax.evaluators``: AutoAttack compacted on the
still-robust points, every example re-classified, the reference's sanity
warnings), writes ``eval_<attack>.json`` and prints per-class tables;
``--sanity`` adds the eps-sweep check and the AutoAttack-vs-PGD-20
comparison.
"""

import json
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from caat_jax import checkpointing as ckpt_lib
from caat_jax import config_lib, evaluators, train
from caat_jax.attacks.autoattack import VERSIONS
from caat_jax.checkpointing.errors import one_line
from caat_jax.evaluators import AUTOATTACK, AUTOATTACK_RAND


def apply_version(attacks_to_run: Sequence[str], version: str) -> list[str]:
  """``--version=rand`` runs 'autoattack' as the reference's version 'rand'
  (``autoattack-rand``: APGD-CE and APGD-DLR, EOT over 20 draws)."""
  if version not in VERSIONS:
    raise config_lib.ConfigError(
      f"--version={version!r}; valid: {', '.join(repr(v) for v in VERSIONS)}"
    )
  if version == "standard":
    return list(attacks_to_run)
  return [AUTOATTACK_RAND if a == AUTOATTACK else a for a in attacks_to_run]


def load_run(
  workdir: str,
  checkpoint: str | None = None,
  step: int | None = None,
  overrides: Mapping[str, object] | None = None,
):
  """Rebuilds a run from its newest readable checkpoint and stored config.

  Steps are tried newest first; one whose config or state fails to read
  (truncated, half-written) is skipped, and the skipped steps are reported in
  one warning line.

  Args:
    workdir: the training run's directory.
    checkpoint: another run directory or checkpoints/ directory to read instead.
    step: the step to restore (no fallback; default the newest readable).
    overrides: ``{'eval.batch_size': 500, ...}`` applied to the stored config
      (evaluation-only keys).
  Returns:
    (run, replicated variables, step): a ``train.Run`` built from the
    checkpoint's config and the classifier in its parallel layout.
  Raises:
    FileNotFoundError: no checkpoint at all.
    checkpoint.CheckpointError: checkpoints exist but none is readable.
  """
  directory = ckpt_lib.resolve_directory(checkpoint or workdir)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  runs = {}  # stored config (JSON) -> Run: rebuilt only when a step's config differs
  try:
    steps = [step] if step is not None else ckpt.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    errors, skipped, restored = [], [], None
    for s in steps:
      try:
        stored = ckpt.restore_config(s)
      except Exception as e:  # pylint: disable=broad-except
        errors.append((s, one_line(e, limit=None)))
        skipped.append(s)
        continue
      key = json.dumps(stored, sort_keys=True)
      if key not in runs:  # a bad stored config is an error, not an unreadable step
        runs[key] = train.Run(_eval_config(stored, overrides))
      run = runs[key]
      try:
        restored = ckpt.restore(run.init_state(), step=s, move_aside=False)
        break
      except ckpt_lib.CheckpointError as e:  # the step's reason, as restore found it
        errors.extend(e.reasons or [(s, one_line(e, limit=None))])
        skipped.append(s)
      except Exception as e:  # pylint: disable=broad-except
        errors.append((s, one_line(e, limit=None)))
        skipped.append(s)
    if restored is None:
      raise ckpt_lib.CheckpointError(
        f"no readable checkpoint in {directory} (tried steps {steps}); nothing was "
        "evaluated:\n"
        + "".join(f"  step {s}: {why}\n" for s, why in errors)
        + "Put readable checkpoints back in that directory (from a copy), or evaluate "
        "another copy of the run with --checkpoint=DIR.",
        reasons=errors,
      )
  finally:
    ckpt.close()
  state, step = restored
  if skipped:
    logging.warning(
      "skipped unreadable checkpoint step(s) %s in %s; evaluating step %d", skipped, directory, step
    )
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return run, run.parallel.replicate(variables), step


def _eval_config(stored: dict, overrides: Mapping[str, object] | None):
  config = ml_collections.ConfigDict(stored)
  with config.unlocked():
    config.init_from = ""  # the checkpoint holds the classifier already
    for key, value in (overrides or {}).items():
      config_lib.set_dotted(config, key, value)
  return config


def eps_sweep_check(
  run,
  variables,
  *,
  eps: float,
  num_examples: int,
  batch_size: int,
  factors: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
  large_eps: float = 1.0,
  num_steps: int = 20,
) -> dict:
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
    out = run.evaluator.outcomes(
      variables,
      run.dataset.test,
      (name,),
      eps=e,
      step_size=max(2.5 * e / num_steps, 1e-8),
      batch_size=batch_size,
      num_examples=num_examples,
    )
    acc.append(100.0 * float(np.mean(out[name])))
  return {
    "attack": f"pgd{num_steps} (step 2.5 eps / {num_steps})",
    "eps": levels,
    "accuracy": acc,
    "monotone": bool(all(a >= b - 1e-9 for a, b in zip(acc, acc[1:]))),
    "zero_at_large": acc[-1] == 0.0,
  }


def compare_check(
  outcomes: Mapping[str, np.ndarray], strong: str = AUTOATTACK, weak: str = "pgd20"
) -> dict:
  """Sanity check: the ensemble is never weaker than PGD-20 on the same points.

  Reports both robust accuracies and the points robust to ``strong`` but
  broken by ``weak`` (each is a point where the ensemble missed an attack).
  """
  s, w = outcomes[strong], outcomes[weak]
  return {
    "strong": strong,
    "weak": weak,
    "robust_accuracy": {strong: 100.0 * float(np.mean(s)), weak: 100.0 * float(np.mean(w))},
    "not_weaker": bool(np.mean(s) <= np.mean(w)),
    "points_missed": int(np.sum(s & ~w)),
  }


def evaluate_checkpoint(
  workdir: str,
  attacks_to_run: Sequence[str],
  *,
  checkpoint: str | None = None,
  num_examples: int | None = None,
  batch_size: int | None = None,
  eps: float | None = None,
  aa_options: Mapping[str, Mapping] | None = None,
  sanity: bool = False,
  out_dir: str | None = None,
  progress: bool = True,
) -> tuple[list[dict], dict]:
  """Restores a run, evaluates every attack on its test split, writes and prints.

  Args:
    workdir: the run directory (its checkpoints/ are read; results go here
      unless ``out_dir``).
    attacks_to_run: names, each 'pgd<k>', 'autoattack' or one of AutoAttack's
      attacks ('apgd-ce', 'apgd-t', 'fab-t', 'square', ...).
    checkpoint: read the checkpoint from here instead.
    num_examples, batch_size, eps: override the stored ``config.eval`` values
      (``num_examples`` 0 = the whole test split).
    aa_options: AutoAttack hyper-parameter overrides (tests only).
    sanity: also run the eps sweep (see ``eps_sweep_check``).
  Returns:
    (documents, sanity): one docs/method.md §9 document per attack (``eval_<attack>.json``,
    with ``verification`` and ``warnings``) and the sanity-check results
    (``eval_sanity.json``).
  """
  overrides = {}
  if num_examples is not None:
    overrides["eval.num_examples"] = int(num_examples)
  if batch_size is not None:
    overrides["eval.batch_size"] = int(batch_size)
  if eps is not None:
    overrides["eval.eps"] = float(eps)
  evaluators.check_names(attacks_to_run, "--attacks", allow_autoattack=True)
  run, variables, step = load_run(workdir, checkpoint, overrides=overrides)
  c = run.config
  # Refuses (one line) an attack the number of classes cannot support, before any runs.
  evaluators.check_num_classes(attacks_to_run, run.dataset.num_classes)
  names = list(attacks_to_run)
  if sanity and AUTOATTACK in names and "pgd20" not in names:
    names.append("pgd20")
  docs, outcomes = run.evaluator.evaluate(
    variables,
    run.dataset.test,
    tuple(names),
    run.dataset.num_classes,
    eps=c.eval.eps,
    step_size=c.eval.step_size,
    batch_size=c.eval.batch_size,
    num_examples=c.eval.num_examples,
    progress=progress,
    aa_options=aa_options,
    labels={"method": c.method, "dataset": c.data.name, "model": c.model},
  )
  docs = [dict(d, step=int(step)) for d in docs if d["attack"] in attacks_to_run]
  checks = {}
  if sanity:
    checks["eps_sweep"] = eps_sweep_check(
      run, variables, eps=c.eval.eps, num_examples=c.eval.num_examples, batch_size=c.eval.batch_size
    )
  if AUTOATTACK in outcomes and "pgd20" in outcomes:
    checks["autoattack_vs_pgd20"] = compare_check(outcomes)

  if jax.process_index() == 0:
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    for d in docs:
      evaluators.write_json(os.path.join(out_dir, f"eval_{d['attack']}.json"), d)
    if checks:
      evaluators.write_json(os.path.join(out_dir, "eval_sanity.json"), checks)
    _print_results(c, step, docs, checks)
  return docs, checks


def _print_results(c, step: int, docs: Sequence[dict], checks: Mapping) -> None:
  print(
    f"\n{c.method} on {c.data.name} ({c.model}), step {step}, eps={c.eval.eps:.4f}, "
    f"{docs[0]['num_examples']} test points (errors in %):"
  )
  print(evaluators.format_table(docs))
  for d in docs:
    print()
    print(evaluators.format_per_class(d))
    if "stages" in d:
      print(
        "robust error (% of points) after each attack: "
        + ", ".join(f"{k} {v:.2f}" for k, v in d["stages"].items())
      )
    v = d["verification"]
    print(
      f"final check ({v['num_points']} points re-classified): max |x_adv - x| = "
      f"{v['max_linf']:.6f}, in [0, 1]: {v['in_box']}, finite: {v['finite']}, "
      f"flags changed: {v['flag_mismatch']}"
    )
    for w in d["warnings"]:
      print(f"warning ({d['attack']}): {w}")
  if checks:
    print("\nsanity checks:")
    if "eps_sweep" in checks:
      s = checks["eps_sweep"]
      print(
        f"  {s['attack']} accuracy (%) by eps: "
        + ", ".join(f"{e:.4f}: {a:.2f}" for e, a in zip(s["eps"], s["accuracy"]))
      )
      print(f"  falls with eps: {s['monotone']}; 0 at eps={s['eps'][-1]}: {s['zero_at_large']}")
    if "autoattack_vs_pgd20" in checks:
      s = checks["autoattack_vs_pgd20"]
      print(
        f"  robust accuracy autoattack {s['robust_accuracy'][AUTOATTACK]:.2f} <= "
        f"pgd20 {s['robust_accuracy']['pgd20']:.2f}: {s['not_weaker']} "
        f"({s['points_missed']} points robust to autoattack but broken by pgd20)"
      )


def main(argv):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from caat_jax import cli  # pylint: disable=g-import-not-at-top

  # Before any attack: where the results go (--out_dir, else the run's own
  # directory) must be writable; nothing is created yet.
  if f.out_dir is not None:
    cli.require_output(cli.check_output_dir, "out_dir", f.out_dir)
  elif os.path.isdir(f.workdir):
    cli.require_output(cli.check_output_dir, "workdir", f.workdir)
  for name, value, low in (("num_examples", f.num_examples, 0), ("batch_size", f.batch_size, 1)):
    if value is not None and value < low:
      raise SystemExit(f"error: --{name}={value}: must be >= {low}")
  if f.eps is not None and not 0 <= f.eps <= 1:  # also NaN
    raise SystemExit(f"error: --eps={f.eps}: must be in [0, 1] (pixel units, e.g. 8/255)")
  try:
    attacks_to_run = apply_version(
      [a.strip() for a in f.attacks.split(",") if a.strip()], f.version
    )
    evaluate_checkpoint(
      f.workdir,
      attacks_to_run,
      checkpoint=f.checkpoint,
      num_examples=f.num_examples,
      batch_size=f.batch_size,
      eps=f.eps,
      sanity=f.sanity,
      out_dir=f.out_dir,
    )
  except (FileNotFoundError, ValueError, ckpt_lib.CheckpointError) as e:
    # ConfigError and IncompatibleConfigError are ValueErrors.
    raise SystemExit(f"error: {e}") from None


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_string(
    "checkpoint",
    None,
    "Run directory or checkpoints/ directory to evaluate instead of "
    "WORKDIR/checkpoints (results still go to --out_dir or WORKDIR).",
  )
  flags.DEFINE_string(
    "attacks",
    "pgd20,pgd100,autoattack",
    "Comma-separated: pgd<k> (CE, uniform start, config eval.step_size), "
    "autoattack (standard version; see --version), autoattack-rand "
    "and/or AutoAttack's attacks alone: apgd-ce, apgd-dlr, apgd-t, fab-t, "
    "square.",
  )
  flags.DEFINE_string(
    "version",
    "standard",
    "AutoAttack version: 'standard' or 'rand' (the reference's version for "
    "randomised defences: 'autoattack' runs APGD-CE and APGD-DLR with the "
    "gradient averaged over 20 draws of the model, as autoattack-rand).",
  )
  flags.DEFINE_integer("num_examples", None, "Test points (0 = all; default config.eval).")
  flags.DEFINE_integer("batch_size", None, "Global eval batch size (default config.eval).")
  flags.DEFINE_float("eps", None, "L-inf bound in pixel units (default config.eval.eps).")
  flags.DEFINE_bool(
    "sanity", False, "Also run the eps sweep sanity check (accuracy falls with eps, 0 at eps=1)."
  )
  flags.DEFINE_string("out_dir", None, "Where to write eval_<attack>.json (default WORKDIR).")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  from caat_jax import cli  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
