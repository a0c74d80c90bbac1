"""The paper's experiments as commands.

  python -m caat_jax.experiments list
  python -m caat_jax.experiments run NAME --workdir=DIR [--seeds=3] [--rows=a,b] \
      [--config.key=value ...]
  python -m caat_jax.experiments emit NAME --workdir=DIR --launcher=slurm|tpu_pod|shell [...]
  python -m caat_jax.experiments report NAME --workdir=DIR [--out=DIR] [--strict] \
      [--reference=ROW]

``run`` trains rows x seeds one after another into DIR/<row>/seed<k>; run it
again to resume (finished runs are skipped, a killed one resumes from its
checkpoint). ``report`` writes DIR/report.md and DIR/report.csv (mean ± std
over seeds beside the paper's number, and each row's paired difference to a
reference row: 95% interval and paired t-test over the seeds both ran;
``--reference=ROW`` picks it) and the figures (DIR/figures); it
names on stderr each run it leaves out (missing, unfinished, unreadable, or
trained otherwise than its row), and with --strict exits 1 if there is one.
Exit status: 0 done, 1 an error (one line on stderr), 130/143 interrupted or
preempted (run the same command again).
"""

import argparse
import sys

from caat_jax import cli, config_lib
from caat_jax.experiments import cost, registry, report, runner


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m caat_jax.experiments", description=__doc__.split("\n\n")[0]
  )
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="every experiment, its rows, seeds and estimated cost")
  for name, text in (
    ("run", "train and evaluate rows x seeds (resumable)"),
    ("emit", "print one cluster job per row x seed"),
    ("report", "tables (Markdown, CSV) and figures from the runs"),
  ):
    s = sub.add_parser(name, help=text)
    s.add_argument("name", help="experiment name (see `list`)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--seeds", type=int, default=None, help="default: the experiment's")
    s.add_argument("--rows", default="", help="comma-separated row names (default all)")
    if name == "emit":
      s.add_argument("--launcher", required=True, choices=runner.LAUNCHERS)
    if name == "report":
      s.add_argument("--out", default=None, help="default: WORKDIR")
      s.add_argument("--no_figures", action="store_true")
      s.add_argument(
        "--reference",
        default=None,
        help="row the paired differences (95%% CI, paired t-test) are taken to; "
        "default the experiment's, '' for none",
      )
      s.add_argument("--formats", default="png,svg", help="figure file types")
      s.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any run is missing, unfinished, unreadable or trained otherwise",
      )
  return p


def _log(line: str) -> None:
  """Progress to stdout; a run that failed to stderr (errors go to stderr)."""
  print(line, file=sys.stderr if ": FAILED: " in line else sys.stdout, flush=True)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
  args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
  if args.command == "list":
    print(cost.listing(registry.EXPERIMENTS.values()))
    return 0
  try:
    exp = registry.get(args.name)
    rows = [r for r in args.rows.split(",") if r]
    if args.seeds is not None and args.seeds < 1:
      raise ValueError(f"--seeds={args.seeds}: must be >= 1")
    # Before any run: the output folder is checked once, up front.
    if args.command == "run":
      cli.check_output_dir("workdir", args.workdir)
    elif args.command == "report":
      cli.check_output_dir(*(("out", args.out) if args.out else ("workdir", args.workdir)))
    if args.command == "run":
      outcomes = runner.run(exp, args.workdir, args.seeds, rows, overrides, log=_log)
      line, failed = runner.summary(exp.name, outcomes)
      print(
        f"{line}. Report: python -m caat_jax.experiments report "
        f"{exp.name} --workdir={args.workdir}",
        file=sys.stderr if failed else sys.stdout,
      )
      return 1 if failed else 0
    if args.command == "emit":
      print("\n".join(runner.emit(exp, args.workdir, args.launcher, args.seeds, rows, overrides)))
      return 0
    problems = []

    def on_problem(message):
      problems.append(message)
      sys.stderr.write(message + "\n")

    written = report.write(
      exp,
      args.workdir,
      args.out,
      seeds=args.seeds,
      rows=rows,
      figures=not args.no_figures,
      formats=tuple(f for f in args.formats.split(",") if f),
      extra=overrides,
      on_problem=on_problem,
      reference=args.reference,
    )
    print("\n".join(written))
    return 1 if problems and args.strict else 0
  except (KeyError, ValueError, FileNotFoundError, config_lib.ConfigError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    sys.stderr.write(f"error: {message}\n")
    return 1
  except KeyboardInterrupt:
    sys.stderr.write("interrupted: run the same command again to resume.\n")
    return 130


if __name__ == "__main__":
  try:
    sys.exit(main())
  except Exception as e:  # preemption: the checkpoint module's exit code
    code = getattr(e, "exit_code", None)
    if code is None:
      raise
    sys.stderr.write(f"caat_jax: {e}\n")
    sys.exit(code)
