"""Entry point: ``python -m caat_jax.main --config=configs/digits.py --workdir=DIR``.

Thin on purpose: parse flags, validate, hand over to ``train``.
"""

import copy
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from caat_jax import config_lib, evaluate, train
from caat_jax.data import DatasetNotFoundError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/digits.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def run_suite(config, workdir: str) -> list[dict]:
  """Trains each method of ``config.suite`` into WORKDIR/<method>; one table."""
  rows = []
  for name in config.suite:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.method = name
      cfg.suite = ()
    docs = train.train_and_evaluate(cfg, os.path.join(workdir, name))
    rows.extend(dict(d, label=name) for d in docs)
  print("\nSide by side (errors in %, class average and worst class):")
  for attack in config.eval.attacks:
    print(f"\n{attack}, eps={config.eval.eps:.4f}")
    print(evaluate.format_table([r for r in rows if r["attack"] == attack], label_key="label"))
  evaluate.write_json(os.path.join(workdir, "comparison.json"), rows)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = FLAGS.config
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  logging.info("config:\n%s", config)
  try:
    if config.suite:
      run_suite(config, FLAGS.workdir)
    else:
      train.train_and_evaluate(config, FLAGS.workdir)
  except (DatasetNotFoundError, config_lib.ConfigError, train.NonFiniteLossError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
