"""Tests for caat_jax.data: transforms, sources (digits, mocked TFDS), augment.
Also ``data.drop_corrupted``: the oracle that trains on the clean-label
examples only."""

from __future__ import annotations

import itertools
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking

from caat_jax import config_lib, data
from caat_jax.data import augment, sources, transforms
from tests.helpers import digits_config

C = 10


def data_config(**overrides) -> ml_collections.ConfigDict:
  """A `config.data` with every key, digits by default."""
  cfg = dict(
    name="digits",
    data_dir=None,
    meta_per_class=10,
    noise_type="none",
    noise_rate=0.0,
    drop_corrupted=False,
    meta_in_train=False,
    imbalance_factor=1.0,
    test_fraction=0.2,
    seed=0,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def balanced_labels(per_class: int, num_classes: int = C) -> np.ndarray:
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


@pytest.mark.parametrize("noise_type", transforms.NOISE_TYPES)
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_transition_matrix_is_row_stochastic(noise_type, rate):
  t = data.noise_transition_matrix(noise_type, rate, C, np.random.default_rng(0))
  assert t.shape == (C, C)
  assert (t >= 0).all()
  np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-12)
  expected_diag = 1.0 if noise_type == "none" else 1.0 - rate
  np.testing.assert_allclose(np.diag(t), expected_diag)


def _noisy(noise_type, rate, n_per_class=500, seed=1):
  clean = balanced_labels(n_per_class)
  t = data.noise_transition_matrix(noise_type, rate, C, np.random.default_rng(seed))
  noisy = transforms.apply_label_noise(clean, t, np.random.default_rng(seed + 1))
  return clean, noisy, t


def _assert_rate(corrupted: np.ndarray, rate: float):
  n = len(corrupted)
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs(corrupted.mean() - rate) < 4 * sigma, (corrupted.mean(), rate)


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_uniform_noise_rate_and_spread(rate):
  clean, noisy, _ = _noisy("uniform", rate)
  corrupted = noisy != clean
  _assert_rate(corrupted, rate)
  for c in range(C):
    targets = noisy[corrupted & (clean == c)]
    assert (targets != c).all()
    counts = np.bincount(targets, minlength=C)
    others = np.delete(counts, c)
    # Every other class is reached, each about 1/(C-1) of the flips.
    assert (others > 0).all()
    p = 1 / (C - 1)
    sd = np.sqrt(len(targets) * p * (1 - p))
    assert (np.abs(others - len(targets) * p) < 5 * sd).all(), others


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_pairflip_noise_rate_and_pattern(rate):
  clean, noisy, _ = _noisy("pairflip", rate)
  corrupted = noisy != clean
  _assert_rate(corrupted, rate)
  np.testing.assert_array_equal(noisy[corrupted], (clean[corrupted] + 1) % C)


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_flip2_noise_rate_and_pattern(rate):
  clean, noisy, t = _noisy("flip2", rate)
  corrupted = noisy != clean
  _assert_rate(corrupted, rate)
  targets = transforms.flip2_targets(t)
  for c in range(C):
    assert len(targets[c]) == 2 and c not in targets[c]
    reached = noisy[corrupted & (clean == c)]
    # Exactly the two chosen classes are reached, each about half the time.
    np.testing.assert_array_equal(np.unique(reached), targets[c])
    share = (reached == targets[c][0]).mean()
    assert abs(share - 0.5) < 5 * np.sqrt(0.25 / len(reached)), share
  # The targets are not one fixed pattern (e.g. always c+1, c+2).
  assert len({tuple((tg - c) % C) for c, tg in enumerate(targets)}) > 1


@pytest.mark.parametrize("noise_type", transforms.NOISE_TYPES)
def test_zero_rate_corrupts_nothing(noise_type):
  clean, noisy, _ = _noisy(noise_type, 0.0)
  np.testing.assert_array_equal(noisy, clean)


def test_flip2_targets_depend_on_rng():
  t0 = data.noise_transition_matrix("flip2", 0.4, C, np.random.default_rng(0))
  t1 = data.noise_transition_matrix("flip2", 0.4, C, np.random.default_rng(1))
  t0b = data.noise_transition_matrix("flip2", 0.4, C, np.random.default_rng(0))
  np.testing.assert_array_equal(t0, t0b)
  assert not np.array_equal(t0, t1)


def test_long_tail_counts_match_cifar10_lt():
  # The CIFAR-10-LT sizes of Cui et al. (2019), n_max = 5000.
  np.testing.assert_array_equal(
    transforms.long_tail_counts(5000, 10, 100), [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
  )
  np.testing.assert_array_equal(
    transforms.long_tail_counts(5000, 10, 10),
    [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],
  )
  np.testing.assert_array_equal(transforms.long_tail_counts(137, 10, 1), [137] * 10)


@pytest.mark.parametrize("imbalance_factor", [1.0, 10.0, 100.0])
def test_long_tail_subsampling_counts(imbalance_factor):
  labels = np.random.default_rng(0).permutation(balanced_labels(1000))
  keep = transforms.long_tail_indices(labels, C, imbalance_factor, np.random.default_rng(0))
  counts = np.bincount(labels[keep], minlength=C)
  expected = [int(np.floor(1000 * imbalance_factor ** (-c / (C - 1)))) for c in range(C)]
  np.testing.assert_array_equal(counts, expected)
  assert counts.argmax() == 0  # Class 0 is the head.
  assert len(np.unique(keep)) == len(keep)


def test_digits_shapes_and_range():
  ds = data.load_dataset(data_config())
  assert ds.name == "digits" and ds.num_classes == 10
  assert ds.image_shape == (8, 8, 1) and ds.augment == "none"
  for split in (ds.train, ds.meta, ds.test):
    assert split.images.shape[1:] == (8, 8, 1)
    assert split.images.dtype == np.float32
    assert split.labels.dtype == np.int32
    assert split.images.min() >= 0 and split.images.max() <= 1
    assert len(split) == len(split.labels) == len(split.clean_labels)
  # Stratified test split of the 1797 digits.
  assert len(ds.test) == pytest.approx(0.2 * 1797, abs=1)
  assert len(ds.train) + len(ds.meta) + len(ds.test) == 1797
  assert len(ds.mean) == len(ds.std) == 1
  assert 0.2 < ds.mean[0] < 0.4 and 0.3 < ds.std[0] < 0.5
  np.testing.assert_array_equal(ds.class_counts, np.bincount(ds.train.labels, minlength=10))


def test_digits_test_split_independent_of_seed_and_transforms():
  a = data.load_dataset(data_config(seed=0))
  b = data.load_dataset(
    data_config(seed=7, noise_type="pairflip", noise_rate=0.4, imbalance_factor=10.0)
  )
  np.testing.assert_array_equal(a.test.images, b.test.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  assert not b.test.corrupted.any()
  assert a.mean == b.mean and a.std == b.std


@pytest.mark.parametrize("noise_type", ["uniform", "pairflip", "flip2"])
def test_meta_is_clean_balanced_disjoint_and_first(noise_type):
  k = 10
  noisy = data.load_dataset(
    data_config(
      meta_per_class=k, noise_type=noise_type, noise_rate=0.4, imbalance_factor=10.0, seed=3
    )
  )
  plain = data.load_dataset(data_config(meta_per_class=k, seed=3))
  meta = noisy.meta
  assert not meta.corrupted.any()
  np.testing.assert_array_equal(np.bincount(meta.labels, minlength=C), [k] * C)
  assert not np.intersect1d(meta.source_index, noisy.train.source_index).size
  # The training split really is noisy and long-tailed ...
  assert noisy.train.corrupted.mean() > 0.3
  # ... yet the meta set is the same examples as without noise or imbalance:
  # it was drawn before either transform.
  np.testing.assert_array_equal(meta.source_index, plain.meta.source_index)
  np.testing.assert_array_equal(meta.images, plain.meta.images)
  # Long tail on the post-meta split: n_max is its largest class.
  raw_counts = np.bincount(plain.train.clean_labels, minlength=C)
  expected = np.minimum(transforms.long_tail_counts(raw_counts.max(), C, 10.0), raw_counts)
  np.testing.assert_array_equal(np.bincount(noisy.train.clean_labels, minlength=C), expected)


def test_source_index_points_at_raw_examples():
  ds = data.load_dataset(data_config(noise_type="uniform", noise_rate=0.4, imbalance_factor=5.0))
  (raw_images, raw_labels), _ = sources.load_digits(0.2)
  for split in (ds.train, ds.meta):
    np.testing.assert_array_equal(split.images, raw_images[split.source_index])
    np.testing.assert_array_equal(split.clean_labels, raw_labels[split.source_index])


def test_same_seed_same_data_different_seed_different_noise():
  cfg = dict(noise_type="uniform", noise_rate=0.4, imbalance_factor=2.0)
  a = data.load_dataset(data_config(seed=5, **cfg))
  b = data.load_dataset(data_config(seed=5, **cfg))
  c = data.load_dataset(data_config(seed=6, **cfg))
  for sa, sb in [(a.train, b.train), (a.meta, b.meta)]:
    np.testing.assert_array_equal(sa.images, sb.images)
    np.testing.assert_array_equal(sa.labels, sb.labels)
    np.testing.assert_array_equal(sa.source_index, sb.source_index)
  assert not np.array_equal(a.meta.source_index, c.meta.source_index)
  assert len(a.train) != len(c.train) or not np.array_equal(a.train.corrupted, c.train.corrupted)


@pytest.mark.parametrize(
  "key,value",
  [
    ("name", "mnist"),
    ("data_dir", 3),
    ("meta_per_class", -1),
    ("meta_per_class", 2.5),
    ("noise_type", "symmetric"),
    ("noise_rate", 1.0),
    ("noise_rate", -0.1),
    ("drop_corrupted", 1),
    ("meta_in_train", "yes"),
    ("imbalance_factor", 0.5),
    ("test_fraction", 0.0),
    ("test_fraction", 1.0),
    ("seed", 1.5),
  ],
)
def test_invalid_config_names_key(key, value):
  with pytest.raises(ValueError, match=f"data.{key}"):
    data.load_dataset(data_config(**{key: value}))


def test_imagenet_points_to_its_tfds_name():
  with pytest.raises(ValueError, match="called 'imagenet2012'"):
    data.load_dataset(data_config(name="imagenet"))


def test_meta_per_class_too_large():
  with pytest.raises(ValueError, match="data.meta_per_class"):
    data.load_dataset(data_config(meta_per_class=1000))


def _mock_getitems(*args, generator, serialized=False):
  """Replacement for tfds' mocked `__getitems__`.

  tfds 4.9.10's `mock_data` assigns `partial(_getitems, generator=...)` as a
  plain attribute of a MagicMock, so `self` is never passed and every batched
  read raises TypeError (`__getitem__` works, as MagicMock binds dunders it
  knows). Accepts both call forms, so it keeps working if tfds fixes that.
  """
  del serialized  # The data source path here reads decoded examples.
  return [generator[k] for k in args[-1]]


def test_tfds_cifar10_via_mock_data(monkeypatch):
  monkeypatch.setattr(tfds_mocking, "_getitems", _mock_getitems)
  with tfds.testing.mock_data(num_examples=300, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(
      data_config(
        name="cifar10",
        data_dir="/nonexistent",
        meta_per_class=3,
        noise_type="pairflip",
        noise_rate=0.2,
      )
    )
  assert ds.image_shape == (32, 32, 3) and ds.augment == "crop_flip"
  assert ds.mean == (0.4914, 0.4822, 0.4465)
  for split in (ds.train, ds.meta, ds.test):
    assert split.images.dtype == np.uint8
    assert split.images.shape[1:] == (32, 32, 3)
    assert split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < 10
  assert len(ds.test) == 300 and len(ds.train) + len(ds.meta) == 300
  np.testing.assert_array_equal(np.bincount(ds.meta.labels, minlength=C), [3] * C)
  assert ds.train.corrupted.any() and not ds.test.corrupted.any()
  # The mock's images are random, not constant: the reader kept them.
  assert ds.train.images.std() > 10


def _fake_as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
  """A tiny data source whose images encode their label and split."""
  del self, decoders, deserialize_method, kwargs
  n = {"train": 200, "test": 50}[split]
  offset = {"train": 0, "test": 100}[split]
  return [
    {
      "image": np.full((32, 32, 3), offset + i % C, np.uint8),
      "label": np.int64(i % C),
    }
    for i in range(n)
  ]


def test_tfds_images_stay_aligned_with_labels():
  with tfds.testing.mock_data(
    as_data_source_fn=_fake_as_data_source, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    ds = data.load_dataset(
      data_config(
        name="svhn",
        data_dir="/nonexistent",
        meta_per_class=4,
        noise_type="uniform",
        noise_rate=0.4,
        imbalance_factor=4.0,
      )
    )
  assert ds.augment == "none" and len(ds.test) == 50
  for split, offset in [(ds.train, 0), (ds.meta, 0), (ds.test, 100)]:
    np.testing.assert_array_equal(split.images[:, 0, 0, 0], offset + split.clean_labels)
  np.testing.assert_array_equal(ds.train.clean_labels, ds.train.source_index % C)


def _tiny_image(split: str, i: int) -> np.ndarray:
  seed = (0 if split == "train" else 1000) + i
  return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), np.uint8)


class CaatTestTiny(tfds.core.GeneratorBasedBuilder):
  """A real array_record TFDS dataset, written without TensorFlow.

  Encoding an `Image` feature (PNG) needs TensorFlow, a raw uint8 `Tensor`
  does not, so this exercises the real `tfds.data_source` read path
  (ArrayRecordDataSource, batched `__getitems__`) end to end.
  """

  VERSION = tfds.core.Version("1.0.0")
  SIZES = {"train": 130, "test": 30}

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=C),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in self.SIZES}

  def _generate_examples(self, split):
    for i in range(self.SIZES[split]):
      yield i, {"image": _tiny_image(split, i), "label": (3 * i) % C}


def test_tfds_real_array_record_read(tmp_path, monkeypatch):
  CaatTestTiny(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  monkeypatch.setattr(sources, "TFDS_NAMES", {**sources.TFDS_NAMES, "cifar10": "caat_test_tiny"})
  monkeypatch.setattr(sources, "_READ_CHUNK", 16)  # Several batched reads.
  ds = data.load_dataset(data_config(name="cifar10", data_dir=str(tmp_path), meta_per_class=2))
  assert len(ds.test) == 30 and len(ds.train) + len(ds.meta) == 130
  # TFDS shuffles records when writing, so match examples by content.
  for name, splits in [("train", (ds.train, ds.meta)), ("test", (ds.test,))]:
    label_of = {
      _tiny_image(name, i).tobytes(): (3 * i) % C for i in range(CaatTestTiny.SIZES[name])
    }
    seen = set()
    for split in splits:
      assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
      for image, label in zip(split.images, split.labels):
        assert label_of[image.tobytes()] == label
        seen.add(image.tobytes())
    assert seen == set(label_of)  # Every record was read, none twice.


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
  start = time.time()
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load_dataset(data_config(name="cifar10", data_dir=str(tmp_path)))
  assert time.time() - start < 10
  assert (f"python -m caat_jax.data.prepare --dataset=cifar10 --data_dir={tmp_path}") in str(
    info.value
  )
  assert isinstance(info.value, FileNotFoundError)
  # Nothing was written into the user's data dir.
  assert not list(tmp_path.iterdir())


def _reference_matches(image, out, pad):
  """All (dy, dx, flipped) with out == crop of the zero-padded image."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  found = []
  for dy, dx, flipped in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
    crop = padded[dy : dy + h, dx : dx + w]
    if flipped:
      crop = crop[:, ::-1]
    if np.array_equal(crop, out):
      found.append((dy, dx, flipped))
  return found


def test_random_crop_flip_matches_reference():
  b, pad = 32, 4
  images = np.random.default_rng(0).random((b, 8, 8, 3), np.float32)
  keys = jax.random.split(jax.random.key(0), b)
  out = np.asarray(jax.jit(augment.random_crop_flip)(images, keys))
  assert out.shape == images.shape and out.dtype == np.float32
  seen = []
  for i in range(b):
    found = _reference_matches(images[i], out[i], pad)
    assert len(found) == 1, (i, found)  # Random pixels: a unique match.
    seen.append(found[0])
  # The augmentation really varies: several offsets, both flip states.
  assert len({s[:2] for s in seen}) > 5
  assert {s[2] for s in seen} == {False, True}


def test_crop_offsets_cover_full_range():
  # Every shift in [-pad, pad]^2 and both flip states occur (uniformly).
  b, pad = 400, 2
  images = np.random.default_rng(4).random((b, 4, 4, 1), np.float32)
  keys = jax.random.split(jax.random.key(4), b)
  out = np.asarray(augment.random_crop_flip(images, keys, pad=pad))
  seen = {_reference_matches(images[i], out[i], pad)[0] for i in range(b)}
  assert seen == set(itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)))


def test_no_pad_no_flip_is_identity():
  images = np.random.default_rng(1).random((4, 6, 6, 1), np.float32)
  keys = jax.random.split(jax.random.key(1), 4)
  out = augment.random_crop_flip(images, keys, pad=0, flip=False)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(augment.augment_fn("none")(images, keys), images)


def test_crop_only_never_flips():
  images = np.random.default_rng(2).random((16, 8, 8, 3), np.float32)
  keys = jax.random.split(jax.random.key(2), 16)
  out = np.asarray(augment.augment_fn("crop")(images, keys))
  for i in range(16):
    found = _reference_matches(images[i], out[i], 4)
    assert found and not found[0][2]


def test_augmentation_is_per_sample():
  images = np.random.default_rng(3).random((8, 8, 8, 3), np.float32)
  keys = jax.random.split(jax.random.key(3), 8)
  fn = augment.augment_fn("crop_flip")
  full = np.asarray(fn(images, keys))
  perm = np.random.default_rng(0).permutation(8)
  permuted = np.asarray(fn(images[perm], keys[perm]))
  np.testing.assert_array_equal(permuted, full[perm])
  # A sub-batch (as one device would see) gives the same per-example result.
  np.testing.assert_array_equal(np.asarray(fn(images[2:5], keys[2:5])), full[2:5])


def test_unknown_augmentation():
  with pytest.raises(ValueError, match="crop_flip"):
    augment.augment_fn("mixup")


def test_drop_corrupted_keeps_the_clean_labels_only():
  """Digits, 40% uniform noise: no corrupted example is left, the kept ones
  are exactly the noisy split's uncorrupted ones (about 60% of it), and the
  meta and test splits are untouched."""
  from caat_jax import data  # pylint: disable=g-import-not-at-top

  cfg = digits_config(**{"data.noise_type": "uniform", "data.noise_rate": 0.4}).data
  noisy = data.load_dataset(cfg)
  cfg.drop_corrupted = True
  oracle = data.load_dataset(cfg)
  assert noisy.train.corrupted.any() and not oracle.train.corrupted.any()
  keep = ~noisy.train.corrupted
  np.testing.assert_array_equal(oracle.train.source_index, noisy.train.source_index[keep])
  np.testing.assert_array_equal(oracle.train.labels, noisy.train.clean_labels[keep])
  assert abs(len(oracle.train) / len(noisy.train) - 0.6) < 0.05
  for split in ("meta", "test"):
    np.testing.assert_array_equal(
      getattr(oracle, split).source_index, getattr(noisy, split).source_index
    )


@pytest.mark.parametrize(
  "overrides", [{}, {"data.noise_rate": 0.4}, {"data.noise_type": "uniform"}]
)
def test_drop_corrupted_needs_noise(overrides):
  config = digits_config(**{"data.drop_corrupted": True, **overrides})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  message = str(err.value)
  if overrides == {"data.noise_rate": 0.4}:  # a rate with no noise type is refused first
    assert "config.data.noise_rate=0.4" in message and "noise_type='none'" in message
  else:
    assert "config.data.drop_corrupted=True" in message and "config.data.noise_rate=" in message
  assert "\n" not in message


@pytest.mark.parametrize("noise", [(), ("uniform", 0.4)])
def test_meta_in_train_appends_the_clean_meta_set_to_training(noise):
  """The control: training = the same training examples (same labels, noisy
  ones included) followed by the meta set with its clean labels; the meta
  and test splits themselves unchanged."""
  from caat_jax import data  # pylint: disable=g-import-not-at-top

  over = {"data.noise_type": noise[0], "data.noise_rate": noise[1]} if noise else {}
  cfg = digits_config(**over).data
  base = data.load_dataset(cfg)
  cfg.meta_in_train = True
  control = data.load_dataset(cfg)
  n, m = len(base.train), len(base.meta)
  assert len(control.train) == n + m and m == 10 * base.num_classes
  np.testing.assert_array_equal(control.train.source_index[:n], base.train.source_index)
  np.testing.assert_array_equal(control.train.labels[:n], base.train.labels)
  np.testing.assert_array_equal(control.train.source_index[n:], base.meta.source_index)
  np.testing.assert_array_equal(control.train.labels[n:], base.meta.clean_labels)
  np.testing.assert_array_equal(control.train.images[n:], base.meta.images)
  assert not control.train.corrupted[n:].any()
  np.testing.assert_array_equal(
    control.class_counts, base.class_counts + np.bincount(base.meta.labels, minlength=10)
  )
  for split in ("meta", "test"):
    np.testing.assert_array_equal(
      getattr(control, split).source_index, getattr(base, split).source_index
    )


@pytest.mark.parametrize(
  "overrides, named",
  [
    ({"data.meta_per_class": 0}, "config.data.meta_per_class=0"),
    ({"data.name": "imagenet2012"}, "imagenet2012 streams"),
  ],
)
def test_meta_in_train_refuses_what_it_cannot_do(overrides, named):
  config = digits_config(**{"data.meta_in_train": True, **overrides})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert "config.data.meta_in_train=True" in str(err.value) and named in str(err.value)
  assert "\n" not in str(err.value)
