r"""Downloads a TFDS dataset and writes it as array_record, once per data dir.

Preparing needs TensorFlow (TFDS's builders use it to generate examples);
reading the result afterwards does not. Install it with the `prepare` extra:

  pip install 'caat_jax[prepare]'
  python -m caat_jax.data.prepare --dataset=cifar10 --data_dir=$HOME/tfds

then train with `--config.data.data_dir=$HOME/tfds`.

ImageNet (`imagenet2012`) cannot be downloaded by TFDS: download
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org, after
accepting its terms) into one folder, then

  python -m caat_jax.data.prepare --dataset=imagenet2012 \
      --manual_dir=$HOME/imagenet_tars --data_dir=$HOME/tfds

(hours, ~150 GB written). It ends by caching the label of every record
(`caat_labels_<split>.npy` beside the records), which the meta hold-out needs.
"""

from __future__ import annotations

import importlib.util
import sys

from absl import app, flags

from caat_jax import cli
from caat_jax.data import imagenet, sources

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
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir",
  None,
  "imagenet2012 only: the folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.",
)
flags.mark_flag_as_required("dataset")

_CONFIGS = {
  "cifar10": "configs/cifar10.py",
  "svhn": "configs/svhn.py",
  "imagenet2012": "configs/imagenet.py",
}


def prepare(dataset: str, data_dir: str | None, manual_dir: str | None = None) -> str:
  """Downloads (or, for imagenet2012, reads from ``manual_dir``) and prepares
  `dataset` as array_record; returns its folder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(sources.TFDS_NAMES[dataset], data_dir=data_dir, file_format="array_record")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)
  if dataset == "imagenet2012":  # the label cache the meta hold-out reads
    for split in imagenet.SPLITS:
      imagenet.read_labels(imagenet.open_source(split, data_dir), split)
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
  if _DATASET.value == "imagenet2012" and not _MANUAL_DIR.value:
    sys.exit(
      "imagenet2012 needs --manual_dir: the folder where you downloaded "
      "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org)."
    )
  where = prepare(_DATASET.value, data_dir, _MANUAL_DIR.value)
  print(f"Prepared {sources.TFDS_NAMES[_DATASET.value]} in {where}")
  print(
    "Train with:\n  python -m caat_jax.main "
    f"--config={_CONFIGS[_DATASET.value]} "
    f"--config.data.data_dir={data_dir} --workdir=runs/{_DATASET.value}"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
