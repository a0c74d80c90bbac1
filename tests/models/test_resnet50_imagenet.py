"""ResNet-50 trains PGD-AT and Meta-CAAT steps at 64 px (ImageNet shapes,
reduced) on CPU, and 8 fake devices land where one device lands."""

import os

import pytest

from tests.helpers import check_devices_agree

RESNET50_64PX = {
  "model": "resnet50",
  "batch_size": 8,
  "meta.batch_size": 8,
  "attack.num_steps": 1,
}


@pytest.mark.slow  # ResNet-50 compiles for minutes on 2 CPU cores (~6 min per method)
@pytest.mark.skipif(
  not os.environ.get("CAAT_RESNET50"),
  reason="opt-in for CI time: ResNet-50 compiles for ~6 min per method on 2 cores; "
  "set CAAT_RESNET50=1 to run it",
)
@pytest.mark.parametrize(
  "method",
  [
    # A known failure, shown rather than hidden: on 8 devices (1 image each)
    # PGD-AT's two steps land more than 1% of the update away from one
    # device's. Small CNN and PreAct-ResNet-18 at 1 image per device agree
    # (checked 2026-12-03), so it is specific to ResNet-50; not diagnosed.
    # strict: the day it passes, this marker must go.
    pytest.param(
      "pgd_at",
      marks=pytest.mark.xfail(
        strict=True, reason="ResNet-50 PGD-AT on 8 devices off the 1-device step by >1% (open)"
      ),
    ),
    "meta_caat",
  ],
)
def test_resnet50_64px_steps_8_devices_equal_1(method, monkeypatch):
  from caat_jax import pipeline

  # 64 x 64 x 3 random images in place of the digits: the model sees ImageNet-like shapes.
  real = pipeline.data.load_dataset
  monkeypatch.setattr(pipeline.data, "load_dataset", lambda cfg: _imagenet_like(real(cfg), cfg))
  check_devices_agree(method, **RESNET50_64PX)


def _imagenet_like(ds, cfg):
  import dataclasses

  import numpy as np

  def grow(split, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(split), 64, 64, 3), np.uint8)
    return dataclasses.replace(split, images=images)

  return dataclasses.replace(
    ds,
    image_shape=(64, 64, 3),
    train=grow(ds.train, 0),
    meta=grow(ds.meta, 1),
    test=grow(ds.test, 2),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
  )
