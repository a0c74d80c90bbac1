"""A tiny ``imagenet2012`` in TFDS's real on-disk format (array_record, JPEG
records), written without TensorFlow or the manual download.

The registered ``imagenet2012`` builder is used with two methods replaced
while the context is open: ``_info`` (``NUM_CLASSES`` classes instead of
1000, so a balanced meta set stays small) and ``_split_generators`` (small
random JPEGs of varied sizes instead of the tar files). Reading goes through
the production path (``tfds.data_source``), which builds the same builder.
"""

from __future__ import annotations

import contextlib
import io
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_CLASSES = 4
SIZES = {"train": 40, "validation": 12}


def jpeg(split: str, i: int) -> bytes:
  """Record ``i`` of ``split``: a random JPEG of 20-39 x 20-39 pixels."""
  rng = np.random.default_rng([i, split == "train"])
  h, w = rng.integers(20, 40, 2)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def label(i: int) -> int:
  return i % NUM_CLASSES


def _info(self):
  return tfds.core.DatasetInfo(
    builder=self,
    features=tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        "file_name": tfds.features.Text(),
      }
    ),
    supervised_keys=("image", "label"),
  )


def _split_generators(self, dl_manager):
  del self, dl_manager

  def generate(split):
    for i in range(SIZES[split]):
      yield f"{split}_{i}", {"image": jpeg(split, i), "label": label(i), "file_name": f"{i}.JPEG"}

  return {split: generate(split) for split in SIZES}


@contextlib.contextmanager
def tiny_imagenet(data_dir: str):
  """Writes the tiny dataset into ``data_dir`` (once) and keeps the builder
  patched while open (reading needs its 4-class ``_info`` too)."""
  cls = tfds.builder_cls("imagenet2012")
  with (
    mock.patch.object(cls, "_info", _info),
    mock.patch.object(cls, "_split_generators", _split_generators),
  ):
    builder = tfds.builder("imagenet2012", data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare()
    yield data_dir
