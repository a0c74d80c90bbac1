"""``python -m caat_jax.meta_bench --config=CONFIG --variants=... --workdir=DIR``.

Trains (or restores) the configured run into ``DIR/run``, then at the
``--checkpoints`` (early, mid, late in training) measures each variant's
meta-gradient against ``nested_grad`` on the same captured step, and its
cost; writes ``DIR/meta_bench.{json,md,png}``. Config overrides as
everywhere: ``--config.num_epochs=5``.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from caat_jax import checkpointing, cli, train
from caat_jax.meta_bench import cost, runner

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string(
  "variants",
  "nested_grad,jvp,first_order,k_step",
  "Comma-separated meta-gradient variants (config.meta.variant names) to measure "
  "against nested_grad (always measured); <name>[option=value;...]: that variant "
  "with some of its config.meta options set, e.g. layerwise[layer_scope=subset]; "
  "<name>@reuse_step: that variant under Meta-CAAT's meta.schedule='reuse_step' "
  "(the real update as its look-ahead).",
)
flags.DEFINE_string("workdir", None, "Where the run trains (DIR/run) and the reports go.")
flags.DEFINE_string(
  "checkpoints", "early,mid,late", "Where in training to measure: early, mid, late."
)
flags.DEFINE_integer("keys", 16, "Keys over which stochastic variants are measured.")
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).")
flags.mark_flags_as_required(["config", "workdir"])


def _names(text: str) -> list[str]:
  return [n.strip() for n in text.split(",") if n.strip()]


def main(argv):
  del argv
  config = cli.config_flag()
  cli.require_output(cli.check_output_dir, "workdir", FLAGS.workdir)
  if FLAGS.keys < 1:
    sys.exit(f"error: --keys={FLAGS.keys}: must be >= 1")
  if FLAGS.repeats < 1:
    sys.exit(f"error: --repeats={FLAGS.repeats}: must be >= 1")
  variants, checkpoints = cost.split_names(FLAGS.variants), _names(FLAGS.checkpoints)
  try:
    runner.check_variants(variants)
    runner.check_checkpoints(checkpoints)
    result = runner.run_meta_bench(
      config,
      variants,
      FLAGS.workdir,
      checkpoints=checkpoints,
      num_keys=FLAGS.keys,
      repeats=FLAGS.repeats,
      log=lambda s: print(s, flush=True),
    )
  except checkpointing.IncompatibleConfigError as e:
    sys.exit(f"error: {runner.incompatible_message(e)}")
  except train.USER_ERRORS as e:  # ConfigError among them
    sys.exit(f"error: {e}")
  with open(result["files"]["markdown"]) as f:
    print(f.read())
  print("wrote " + ", ".join(result["files"].values()))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
