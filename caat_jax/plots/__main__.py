"""Draws the figures of a run, or of every run under a directory:

  python -m caat_jax.plots --workdir=DIR [--out=DIR/figures]

Per-class natural and robust errors of each row side by side (Figs. 11-12),
adversary ratio and bound per class over training (Figs. 9, 13), clean vs
corrupted samples (Fig. 10) and training curves, as PNG and SVG; seeds of a
row (DIR/<row>/seed<k>/) are averaged. Prints the files written and one line
per figure skipped for want of data. Exit status 1 with one line when DIR
does not exist or holds no run.
"""

import os

from absl import app, flags

from caat_jax import cli
from caat_jax.plots import NoRunsError, draw_all


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  # Before drawing anything: the figures' folder must be writable.
  if f.out is not None:
    cli.require_output(cli.check_output_dir, "out", f.out)
  elif f.workdir:  # WORKDIR/figures
    cli.require_output(cli.check_output_dir, "workdir", f.workdir)
    cli.require_output(cli.check_output_dir, "workdir", os.path.join(f.workdir, "figures"))
  try:
    paths = draw_all(f.workdir, f.out)
  except NoRunsError as e:
    raise SystemExit(f"error: --workdir={e}") from None
  except OSError as e:
    raise SystemExit(f"error: writing figures to {f.out or f.workdir}: {e}") from None
  print(f"wrote {len(paths)} files:")
  for p in paths:
    print(f"  {p}")


def _define_flags():
  flags.DEFINE_string(
    "workdir",
    None,
    "A run directory, or a directory holding runs at any depth "
    "(experiment rows DIR/<row>/seed<k>/, suites DIR/<method>/).",
  )
  flags.DEFINE_string(
    "out", None, "Where to write the PNG and SVG files (default WORKDIR/figures)."
  )
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
