r"""Downloads a TFDS dataset and writes it as array_record, once per data dir.

Preparing needs TensorFlow (TFDS's builders use it to generate examples);
reading the result afterwards does not. Install it with the `prepare` extra:

  pip install 'caat_jax[prepare]'
  python -m caat_jax.data.prepare --dataset=cifar10 --data_dir=$HOME/tfds

then train with `--config.data.data_dir=$HOME/tfds`.
"""

from __future__ import annotations

import importlib.util
import sys

from absl import app, flags

from caat_jax import cli
from caat_jax.data import sources

_DATASET = flags.DEFINE_enum(
  "dataset",
  None,
  sorted(sources.TFDS_NAMES),
  "Dataset to prepare (the digits are bundled with scikit-learn and need no preparation).",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  None,
  "TFDS data dir to write to; default: TFDS's ($TFDS_DATA_DIR or ~/tensorflow_datasets).",
)
flags.mark_flag_as_required("dataset")

_CONFIGS = {"cifar10": "configs/cifar10.py", "svhn": "configs/svhn.py"}


def prepare(dataset: str, data_dir: str | None) -> str:
  """Downloads and prepares `dataset` as array_record; returns its folder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(sources.TFDS_NAMES[dataset], data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  data_dir = _DATA_DIR.value or sources.default_data_dir()
  # Fail before any download: a folder that cannot be written, or no
  # TensorFlow (without it, TFDS can only read).
  cli.require_output(cli.check_output_dir, "data_dir", data_dir)
  if importlib.util.find_spec("tensorflow") is None:
    sys.exit(
      "Preparing a TFDS dataset needs TensorFlow, which is not installed. "
      "Install the prepare extra: pip install 'caat_jax[prepare]' "
      "(reading prepared data for training does not need it)."
    )
  where = prepare(_DATASET.value, data_dir)
  print(f"Prepared {sources.TFDS_NAMES[_DATASET.value]} in {where}")
  print(
    "Train with:\n  python -m caat_jax.main "
    f"--config={_CONFIGS[_DATASET.value]} "
    f"--config.data.data_dir={data_dir} --workdir=runs/{_DATASET.value}"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
