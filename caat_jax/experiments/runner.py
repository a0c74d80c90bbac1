"""Running an experiment: rows x seeds into ``WORKDIR/<row>/seed<k>``.

Each run is ``caat_jax.train.train_and_evaluate`` on the row's config (so a
killed run resumes from its newest checkpoint), followed by the evaluations
the experiment needs that the run does not hold yet (``eval_<attack>.json``
through ``caat_jax.evaluate``). A run whose training finished (``eval.json``
written) and whose evaluations exist is skipped. Runs go seed by seed, so a
partial experiment has every row of its first seeds.
"""

import dataclasses
import os
import shlex
from collections.abc import Sequence

import ml_collections

from caat_jax import cli, config_lib
from caat_jax.experiments import select
from caat_jax.experiments.registry import Experiment, Row
from caat_jax.plots import runs as plots_runs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHERS = ("shell", "slurm", "tpu_pod")
# The outcome of a run another runner holds (its workdir lock): "elsewhere: <holder>".
ELSEWHERE = "elsewhere"


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One row x seed: where it runs and its full override list."""

  row: Row
  seed: int
  workdir: str
  overrides: tuple[str, ...]
  candidate: str = ""  # a selection row's grid point (``select.py``); "" otherwise


def load_config(path: str) -> ml_collections.ConfigDict:
  """A config file ``path[:variant]``, relative to the working directory if
  it has the file there (a fork's own configs), else to the repository."""
  root = os.getcwd() if os.path.isfile(path.partition(":")[0]) else REPO_ROOT
  config, message = cli.load_config(path, root)
  if message:
    raise config_lib.ConfigError(message)
  return config


def eval_overrides(exp: Experiment) -> tuple[str, ...]:
  """The PGD evaluations run at the end of training (the others afterwards)."""
  pgd = tuple(a for a in exp.attacks if a.startswith("pgd"))
  return (f"eval.attacks={pgd!r}",) if pgd else ()


def plan(
  exp: Experiment,
  workdir: str,
  seeds: int | None = None,
  rows: Sequence[str] | None = None,
  extra: Sequence[str] = (),
) -> list[RunSpec]:
  """Every run of ``exp``, seed-major; raises ``KeyError`` on an unknown row."""
  selected = [exp.row(r) for r in rows] if rows else list(exp.rows)
  n = exp.seeds if seeds is None else int(seeds)
  if n < 1:
    raise ValueError(f"--seeds={n}: must be >= 1")
  return [
    s
    for seed in range(n)
    for row in selected
    for s in (
      [spec(exp, row, seed, workdir, extra, tag) for tag, _ in row.select.candidates()]
      if row.select
      else [spec(exp, row, seed, workdir, extra)]
    )
  ]


def spec(
  exp: Experiment,
  row: Row,
  seed: int,
  workdir: str,
  extra: Sequence[str] = (),
  candidate: str = "",
) -> RunSpec:
  """Row ``row``'s run of seed ``seed`` (of grid point ``candidate`` for a
  selection row): its workdir and its overrides."""
  grid = dict(row.select.candidates())[candidate] if candidate else ()
  overrides = (
    exp.overrides + row.overrides + grid + eval_overrides(exp) + (f"seed={seed}",) + tuple(extra)
  )
  where = (
    select.candidate_dir(workdir, row.name, candidate, seed)
    if candidate
    else os.path.join(workdir, row.name, f"seed{seed}")
  )
  return RunSpec(row, seed, where, overrides, candidate)


def build_config(spec: RunSpec) -> ml_collections.ConfigDict:
  """The run's config: its file, then the overrides; validated (no training)."""
  config = config_lib.apply_overrides(load_config(spec.row.config), spec.overrides)
  config_lib.validate(config)
  return config


def documents(run_dir: str) -> dict[str, dict]:
  """The run's evaluation documents by attack (``eval_<attack>.json`` wins
  over the end-of-training ``eval.json``; read as the figures read them)."""
  return {d["attack"]: d for d in plots_runs.read_eval_docs(run_dir)}


def status(spec: RunSpec, exp: Experiment) -> str:
  """'done', 'evaluate' (trained, evaluations missing), 'resume' or 'new'."""
  if os.path.isfile(os.path.join(spec.workdir, "eval.json")):
    have = documents(spec.workdir)
    done = all(a in have for a in exp.attacks) and select.done(spec)
    return "done" if done else "evaluate"
  if os.path.isdir(os.path.join(spec.workdir, "checkpoints")):
    return "resume"
  return "new"


def trained_config_differences(
  run_dir: str, config: ml_collections.ConfigDict, keys: Sequence[str]
) -> list:
  """[(key, the run's value, ``config``'s)] for ``keys`` (a row's override
  keys, and what is under them) whose values differ and change training
  (``checkpointing.config_differences``: evaluation, logging and launch keys
  excepted), read from the config stored with the run's newest checkpoint;
  [] when they agree or no checkpoint is readable (then training resumes and
  checks the whole config).

  Only the overrides are compared: a key the row leaves to its config file
  may belong to another method (a TRADES run ignores ``caat.*``), so a
  config file edited since the run would flag runs it does not change.
  """
  from caat_jax import checkpointing  # pylint: disable=import-outside-toplevel

  directory = checkpointing.checkpoint_dir(run_dir)
  if not os.path.isdir(directory):
    return []
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      return []
    try:
      stored = ckpt.restore_config(step)
    except Exception:  # pylint: disable=broad-except  (unreadable: training decides)
      return []
  finally:
    ckpt.close()
  under = lambda k: any(k == o or k.startswith(o + ".") for o in keys)
  return [
    d
    for d in checkpointing.config_differences(stored, checkpointing.config_as_json(config))
    if under(d[0])
  ]


def run(
  exp: Experiment,
  workdir: str,
  seeds: int | None = None,
  rows: Sequence[str] | None = None,
  extra: Sequence[str] = (),
  log=print,
) -> list[tuple[RunSpec, str]]:
  """Runs every missing run of ``exp``; returns [(spec, outcome)].

  An outcome is "ran", "skipped" (done before), "failed: <why>" or
  "elsewhere: <holder>" (another runner holds the run's workdir lock).

  Every config is built and validated before the first run starts, so a bad
  override fails at once. A run that raises (NaN, a bad checkpoint) is
  reported and the others go on; a preemption or Ctrl-C stops the whole
  experiment (run the command again to resume).
  """
  # Imported here: listing and emitting need neither JAX devices nor the trainer.
  import jax  # pylint: disable=import-outside-toplevel

  from caat_jax import checkpointing, evaluate, metrics, train  # pylint: disable=import-outside-toplevel
  from caat_jax.checkpointing import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  if exp.unavailable:
    raise config_lib.ConfigError(f"experiment {exp.name!r} cannot run: {exp.unavailable}")
  specs = plan(exp, workdir, seeds, rows, extra)
  configs = [build_config(s) for s in specs]
  outcomes = []
  for i, (spec, config) in enumerate(zip(specs, configs)):
    name = spec.row.name + (f"/{spec.candidate}" if spec.candidate else "")
    where = f"[{i + 1}/{len(specs)}] {name} seed {spec.seed}"
    state = status(spec, exp)
    if state in ("done", "evaluate"):
      # A finished run is reused only if it was trained with this row's
      # overrides (a changed --config override, or a workdir shared with
      # another experiment whose row of the same name differs, would
      # otherwise be reported as this row).
      diffs = trained_config_differences(
        spec.workdir, config, [o.split("=", 1)[0] for o in spec.overrides]
      )
      if diffs:
        keys = ", ".join(f"{k}: {o!r} (run) vs {n!r} (row)" for k, o, n in diffs[:6])
        log(
          f"{where}: FAILED: {spec.workdir} holds a run trained with a different config "
          f"({keys}); use another --workdir"
        )
        outcomes.append((spec, f"failed: different config ({keys})"))
        continue
    if state == "done":
      log(f"{where}: done, skipped ({spec.workdir})")
      outcomes.append((spec, "skipped"))
      continue
    doing = {"resume": "resuming", "new": "training"}.get(state, "evaluating")
    log(f"{where}: {doing} -> {spec.workdir}")
    try:
      with workdir_lib.lock(spec.workdir):  # checks (and creates) it first
        if state != "evaluate":
          train.train_and_evaluate(config, spec.workdir)
        have = documents(spec.workdir)
        missing = [a for a in exp.attacks if a not in have]
        if missing:
          evaluate.evaluate_checkpoint(
            spec.workdir, missing, num_examples=exp.eval_examples or None, progress=False
          )
        select.step(spec)  # a selection candidate's criterion, on its split
      outcomes.append((spec, "ran"))
    except (checkpointing.Preempted, KeyboardInterrupt):
      raise
    except workdir_lib.WorkdirInUseError as e:
      # Another runner (a second ``experiments run`` sharing the experiment)
      # has this run: not a failure; that runner reports it.
      log(f"{where}: held by another runner ({e.holder_text}); left to it")
      outcomes.append((spec, f"{ELSEWHERE}: {e.holder_text}"))
    except (
      metrics.NonFiniteLossError,
      checkpointing.CheckpointError,
      checkpointing.IncompatibleConfigError,
      workdir_lib.WorkdirError,
    ) as e:
      log(f"{where}: FAILED: {e}")
      outcomes.append((spec, f"failed: {e}"))
    finally:
      # Every run compiles its own executables (its step, each attack at
      # each batch size): kept, they pile up in this one process until the
      # kernel's limit on memory maps (vm.max_map_count, 65,530) fails the
      # next compilation (~4,100 maps per AutoAttack evaluation on digits:
      # an AutoAttack experiment died at its 11th run). Drop them.
      jax.clear_caches()
  select.record_all(specs, workdir, log)
  return outcomes


def summary(name: str, outcomes: Sequence[tuple[RunSpec, str]]) -> tuple[str, bool]:
  """The closing line of ``run`` (done / failed / elsewhere), and whether any failed."""
  label = lambda s: f"{s.row.name}{'/' + s.candidate if s.candidate else ''}/seed{s.seed}"
  failed = [label(s) for s, o in outcomes if o.startswith("failed")]
  elsewhere = [label(s) for s, o in outcomes if o.startswith(ELSEWHERE)]
  done = len(outcomes) - len(failed) - len(elsewhere)
  text = f"{name}: {len(outcomes)} runs: {done} done, {len(failed)} failed"
  text += f" ({', '.join(failed)})" if failed else ""
  text += f", {len(elsewhere)} elsewhere"
  if elsewhere:
    text += (
      f" (held by another runner: {', '.join(elsewhere)}; run again once it ends to "
      "check they finished)"
    )
  return text, bool(failed)


def _flags(overrides: Sequence[str]) -> str:
  return " ".join(shlex.quote(f"--config.{o}") for o in overrides)


def emit(
  exp: Experiment,
  workdir: str,
  launcher: str,
  seeds: int | None = None,
  rows: Sequence[str] | None = None,
  extra: Sequence[str] = (),
) -> list[str]:
  """Launch commands, one job per row x seed, through ``launch/``."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"--launcher={launcher!r}; valid: {', '.join(LAUNCHERS)}")
  if exp.unavailable:
    raise config_lib.ConfigError(f"experiment {exp.name!r} cannot run: {exp.unavailable}")
  lines = []
  for spec in plan(exp, workdir, seeds, rows, extra):
    build_config(spec)  # a bad row or override fails here, not on the cluster
    config, wd, flags = (
      shlex.quote(spec.row.config),
      shlex.quote(spec.workdir),
      _flags(spec.overrides),
    )
    if launcher == "shell":
      cmd = f"launch/local.sh {config} {wd} {flags}"
    elif launcher == "slurm":
      job = f"{exp.name}-{spec.row.name}-s{spec.seed}"
      cmd = f"sbatch --job-name={job} launch/slurm.sbatch {config} {wd} {flags}"
    else:
      cmd = f"WORKDIR={wd} launch/tpu_pod.sh run {config} {flags}"
    lines.append(cmd)
    missing = [a for a in exp.attacks if not a.startswith("pgd")]
    if missing:  # the non-PGD evaluations after training, in the same job chain
      n = f" --num_examples={exp.eval_examples}" if exp.eval_examples else ""
      lines.append(f"python -m caat_jax.evaluate --workdir={wd} --attacks={','.join(missing)}{n}")
  return lines
