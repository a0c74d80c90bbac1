"""caat_jax.data.imagenet: the lazy record-backed splits of imagenet2012, on a
tiny dataset written in TFDS's real on-disk format (tests/data/tiny_imagenet)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from caat_jax import data
from caat_jax.data import imagenet
from tests.data import tiny_imagenet as tiny

SIZE = 16  # reduced resolution


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  with tiny.tiny_imagenet(str(tmp_path_factory.mktemp("tfds"))) as d:
    yield d


def imagenet_config(data_dir, **overrides):
  cfg = dict(
    name="imagenet2012",
    data_dir=data_dir,
    meta_per_class=2,
    noise_type="none",
    noise_rate=0.0,
    drop_corrupted=False,
    meta_in_train=False,
    imbalance_factor=1.0,
    test_fraction=0.2,
    seed=0,
    image_size=SIZE,
    num_workers=0,
    prefetch=2,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _record_labels(images: imagenet.RecordImages, split: str) -> np.ndarray:
  """Each record's label, found from its JPEG bytes (TFDS shuffles records)."""
  label_of = {tiny.jpeg(split, i): tiny.label(i) for i in range(tiny.SIZES[split])}
  return np.array([label_of[b] for b in images.read(images.index)])


def test_splits_meta_balanced_disjoint_and_labels_match_records(data_dir):
  ds = data.load_dataset(imagenet_config(data_dir))
  assert ds.num_classes == tiny.NUM_CLASSES and ds.image_shape == (SIZE, SIZE, 3)
  assert ds.augment == "none"  # random-resized crop and flip happen on the host
  np.testing.assert_array_equal(np.bincount(ds.meta.labels), [2] * tiny.NUM_CLASSES)
  train_rec, meta_rec = ds.train.images.index, ds.meta.images.index
  assert not set(train_rec) & set(meta_rec)
  assert sorted(np.concatenate([train_rec, meta_rec])) == list(range(tiny.SIZES["train"]))
  np.testing.assert_array_equal(ds.train.source_index, train_rec)
  for split, name in ((ds.train, "train"), (ds.meta, "train"), (ds.test, "validation")):
    np.testing.assert_array_equal(split.labels, _record_labels(split.images, name))
  assert len(ds.test) == tiny.SIZES["validation"]


def test_meta_held_out_before_noise_and_long_tail(data_dir):
  plain = data.load_dataset(imagenet_config(data_dir))
  noisy = data.load_dataset(
    imagenet_config(data_dir, noise_type="uniform", noise_rate=0.5, imbalance_factor=2.0)
  )
  np.testing.assert_array_equal(noisy.meta.images.index, plain.meta.images.index)
  np.testing.assert_array_equal(noisy.meta.labels, plain.meta.labels)  # clean
  assert noisy.train.corrupted.any() and len(noisy.train) < len(plain.train)


def test_label_cache_written_and_reused(data_dir):
  source = imagenet.open_source("train", data_dir)
  first = imagenet.read_labels(source, "train")
  path = imagenet._cache_path(source, "train")
  np.testing.assert_array_equal(np.load(path), first)
  np.save(path, first[::-1].copy())  # a reader that re-read the records would not see this
  np.testing.assert_array_equal(imagenet.read_labels(source, "train"), first[::-1])
  np.save(path, first)


def test_evaluation_images_deterministic_and_centre_cropped(data_dir):
  ds = data.load_dataset(imagenet_config(data_dir))
  a, b = np.asarray(ds.test.images), np.asarray(ds.test.images[np.arange(len(ds.test))])
  assert a.shape == (tiny.SIZES["validation"], SIZE, SIZE, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[3], ds.test.images[3])  # one image, the same transform


def test_center_crop_of_an_image_already_at_the_resize():
  size = 14  # shorter side resized to 16: a 16 x 20 image is not resampled
  pixels = np.random.default_rng(0).integers(0, 256, (16, 20, 3), np.uint8)
  from PIL import Image

  out = imagenet.center_crop(Image.fromarray(pixels), size)
  np.testing.assert_array_equal(out, pixels[1:15, 3:17])


@pytest.mark.parametrize("shape", [(500, 375), (64, 300), (300, 20)])
def test_random_resized_crop_box_within_scale_and_ratio(shape):
  rng = np.random.default_rng(1)
  w, h = shape
  for _ in range(200):
    left, top, cw, ch = imagenet.crop_box(w, h, rng)
    assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
    if (w, h) == (500, 375):  # the 10 tries succeed: torchvision's ranges (rounding aside)
      assert 0.07 <= cw * ch / (w * h) <= 1.0 and 0.74 <= cw / ch <= 1.35


def test_random_resized_crop_flip_deterministic_in_its_rng():
  from PIL import Image

  image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), np.uint8))
  outs = [imagenet.random_resized_crop_flip(image, 8, np.random.default_rng(s)) for s in (5, 5, 6)]
  assert outs[0].shape == (8, 8, 3)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("key, value", [("image_size", 4), ("num_workers", -1), ("prefetch", 0)])
def test_invalid_stream_setting_names_key(key, value):
  with pytest.raises(ValueError, match=f"data.{key}"):
    data.validate_config(imagenet_config(None, **{key: value}))
