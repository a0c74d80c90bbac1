"""Entry point: ``python -m caat_jax.main --config=configs/digits.py --workdir=DIR``.

Thin on purpose: parse flags, validate, join a multi-host run if there is
one, hand over to ``train``. Run the same command again with the same
``--workdir`` to resume. Exit status: 0 done, 1 an error (message on
stderr), 143 saved and stopped for a preemption (run again to resume), 75 another
process of a multi-host run was lost (docs/running.md, "Many hosts").
"""

import copy
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from caat_jax import (
  checkpointing,
  cli,
  config_lib,
  evaluators,
  multihost,
  parallel,
  train,
)
from caat_jax.checkpointing import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file, e.g. configs/digits.py.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume even if the checkpoint's config differs from --config in keys that "
  "change the training trajectory (they are listed as a warning instead).",
)
flags.mark_flags_as_required(["config", "workdir"])


def run_suite(config, workdir: str, allow_config_change: bool = False) -> list[dict]:
  """Trains each method of ``config.suite`` into WORKDIR/<method>; one table."""
  rows = []
  for name in config.suite:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.method = name
      cfg.suite = ()
    docs = train.train_and_evaluate(
      cfg, os.path.join(workdir, name), allow_config_change=allow_config_change
    )
    rows.extend(dict(d, label=name) for d in docs)
  if jax.process_index() != 0:  # every process has the rows; one reports them
    return rows
  print("\nSide by side (errors in %, class average and worst class):")
  for attack in config.eval.attacks:
    print(f"\n{attack}, eps={config.eval.eps:.4f}")
    print(evaluators.format_table([r for r in rows if r["attack"] == attack], label_key="label"))
  evaluators.write_json(os.path.join(workdir, "comparison.json"), rows)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = cli.config_flag()
  # Checked first, created only once the config is valid (workdir_lib.lock).
  cli.require_output(cli.check_output_dir, "workdir", FLAGS.workdir)
  try:
    config_lib.validate(config)
    # Before anything touches a device: jax.devices() must list every host's.
    parallel.initialize_distributed(config.parallel, supervise=True)
    # With the device count known, and before the workdir is created, so a
    # batch that does not divide over the devices leaves nothing behind.
    config_lib.validate(config, jax.device_count())
  except ValueError as e:
    sys.exit(f"error: {e}")
  logging.info("config:\n%s", config)
  try:
    # One run per workdir: process 0 holds an exclusive lock for the run's
    # life (the workdir is checked and created first); every process checks
    # it can write there (multi-host runs need not share a filesystem). The
    # lock removes a workdir it created if the run fails before writing to it.
    if jax.process_index() != 0:
      workdir_lib.check(FLAGS.workdir)
    with workdir_lib.lock(FLAGS.workdir, enabled=jax.process_index() == 0):
      if config.suite:
        run_suite(config, FLAGS.workdir, FLAGS.allow_config_change)
      else:
        train.train_and_evaluate(
          config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change
        )
  except checkpointing.Preempted as e:
    print(f"caat_jax: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C: stops at once, without saving
    print(
      "caat_jax: interrupted (second Ctrl-C): stopped without saving; run the same "
      "command again to resume from the last checkpoint.",
      file=sys.stderr,
    )
    sys.exit(checkpointing.EXIT_INTERRUPTED)
  except train.USER_ERRORS as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  # A lost peer of a multi-host run: one line and exit 75 (caat_jax.multihost).
  app.run(multihost.guarded(main), flags_parser=cli.parse_flags)
