"""``python -m caat_jax.bench --config=CONFIG [--attacks=...] [--out=bench.json]``.

Times each method of ``config.bench.methods`` (``bench.steps``) and, with
``--attacks``, each evaluation attack (``bench.attacks``); prints tables as
rows finish and writes ``--out`` (JSON).
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from caat_jax import cli, config_lib
from caat_jax.attacks.compact import PACKS
from caat_jax.bench.attacks import (
  attack_table_head,
  check_attack_args,
  format_attack_row,
  run_attack_bench,
)
from caat_jax.bench.steps import format_rows, run_bench

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
flags.DEFINE_string(
  "attacks",
  "",
  "Also time evaluation attacks, seconds per 1000 examples: comma-separated from "
  "pgd<k>, apgd-ce, apgd-dlr, apgd-t, fab-t, square, autoattack, autoattack-rand. "
  "Default worst case: "
  "eps = 0 and labels = predictions, so no point is ever broken and every attack "
  "spends its whole budget (what a fully robust model costs). Empty: train steps only.",
)
flags.DEFINE_string(
  "attack_model_from",
  "",
  "Time the attacks on a trained run's model (its workdir) and its test "
  "points with their labels, at its config.eval.eps, instead of the worst "
  "case.",
)
flags.DEFINE_float(
  "attack_eps",
  None,
  "L-inf bound for the timed attacks (default 0, or the trained run's config.eval.eps).",
)
flags.DEFINE_integer(
  "attack_points", 0, "Points to attack (default --attack_batch).", lower_bound=0
)
flags.DEFINE_bool(
  "no_compact",
  False,
  "Time the AutoAttack family on fixed batches (every point through every "
  "attack) instead of compacted on the points still robust.",
)
flags.DEFINE_enum(
  "attack_pack",
  "auto",
  list(PACKS),
  "How compaction fills its buckets: fewest padded slots, fewest calls, or "
  "auto (slots on a CPU, calls on an accelerator).",
)
flags.DEFINE_integer(
  "attack_repeats",
  1,
  "Run each timed attack this many times; > 1 reports the median of all "
  "but the first (steady state) and the first apart ('first').",
  lower_bound=1,
)
flags.DEFINE_string(
  "attack_models",
  "",
  "Models to time the attacks on, e.g. small_cnn,preact_resnet18 "
  "(default config.model), on the config's dataset shape.",
)
flags.DEFINE_integer(
  "attack_batch",
  0,
  "Examples per timed attack call (default config.bench.batch_size).",
  lower_bound=0,
)
flags.DEFINE_bool("skip_train_bench", False, "Only time the attacks.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = cli.config_flag()
  # Before any timing: a result that cannot be written is refused up front.
  cli.require_output(cli.check_output_file, "out", FLAGS.out)
  eps = FLAGS.attack_eps
  if eps is not None and not 0 <= eps <= 1:  # also NaN
    sys.exit(f"error: --attack_eps={eps}: must be in [0, 1] (pixel units, e.g. 8/255 = 0.0314)")
  names = [a.strip() for a in FLAGS.attacks.split(",") if a.strip()]
  model_names = [m.strip() for m in FLAGS.attack_models.split(",") if m.strip()]
  if not names and (FLAGS.skip_train_bench or not config.bench.methods):
    sys.exit(
      "error: nothing to measure: "
      + ("--skip_train_bench" if FLAGS.skip_train_bench else "--config.bench.methods is empty")
      + " and no --attacks; name methods in --config.bench.methods or attacks in --attacks"
    )
  try:
    if FLAGS.attacks:
      check_attack_args(names, model_names)
    result = (
      {}
      if FLAGS.skip_train_bench
      else run_bench(
        config,
        on_row=lambda r: print(  # rows as they end: a killed run keeps them
          f"{r['method']}: compile {r['compile_s']:.2f} s, step {1e3 * r['step_s']:.1f} ms",
          flush=True,
        ),
      )
    )
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  if result:
    print(format_rows(result))
  if names:  # rows print as they finish: a PreAct-ResNet-18 on a CPU takes hours
    print(attack_table_head(config.data.name, FLAGS.attack_model_from), flush=True)
    result["attacks"] = run_attack_bench(
      config,
      names,
      model_names or [config.model],
      FLAGS.attack_batch or config.bench.batch_size,
      on_row=lambda r: print(format_attack_row(r), flush=True),
      source=FLAGS.attack_model_from,
      eps=FLAGS.attack_eps,
      num_points=FLAGS.attack_points,
      compact=not FLAGS.no_compact,
      repeats=FLAGS.attack_repeats,
      pack=FLAGS.attack_pack,
    )
  out = FLAGS.out
  lost = _not_kept(out, result)
  if lost:
    out = _beside(FLAGS.out)
    sys.stderr.write(
      f"bench: {FLAGS.out} holds {lost} that this run did not measure; "
      f"kept it as it was and wrote this run's results to {out}\n"
    )
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {out}")


def _entries(result: dict, prefix: tuple = ()) -> set:
  """What a result holds: ("key", ...) paths, and ("row", where, method,
  attack, model) for each row of a list."""
  out = set()
  for key, value in result.items():
    out.add(prefix + (key,))
    if isinstance(value, dict):
      out |= _entries(value, prefix + (key,))
    for r in value if isinstance(value, list) else ():
      if isinstance(r, dict):
        ident = " ".join(str(r[k]) for k in ("method", "attack", "model") if r.get(k))
        out.add(("row", "/".join(prefix + (key,)), ident))
  return out


def _not_kept(path: str, result: dict) -> str:
  """What the file at ``path`` holds that ``result`` would not ('' if nothing)."""
  if not os.path.exists(path):
    return ""
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return "" if os.path.getsize(path) == 0 else "data that is not a readable result"
  if not isinstance(old, dict):
    return "data that is not a result"
  gone = _entries(old) - _entries(result)
  rows = sorted(f"{e[1]}: {e[2]}" for e in gone if e[0] == "row")
  keys = sorted("/".join(e) for e in gone if e[0] != "row")
  if rows:
    return "rows (" + ", ".join(rows) + ")"
  return "keys (" + ", ".join(keys) + ")" if keys else ""


def _beside(path: str) -> str:
  """A free name next to ``path``: ``bench.new.json``, ``bench.new2.json``..."""
  base, ext = os.path.splitext(path)
  n, candidate = 1, f"{base}.new{ext}"
  while os.path.exists(candidate):
    n += 1
    candidate = f"{base}.new{n}{ext}"
  return candidate


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
