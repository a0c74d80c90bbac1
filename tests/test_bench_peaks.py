"""The MFU column's peak table: device kinds as JAX spells them, the
arithmetic, and what has no peak."""

import pytest

from caat_jax.bench import peaks


@pytest.mark.parametrize(
  "kind,dtype,expected",
  [
    ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA H100 80GB HBM3", "float32", 494e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("TPU v4", "float32", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),  # v5e: not v5p's 459
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    ("cpu", "float32", None),
    ("NVIDIA GeForce RTX 4090", "bfloat16", None),
  ],
)
def test_peak_by_device_kind(kind, dtype, expected):
  assert peaks.peak_flops(kind, dtype) == expected


def test_mfu_is_achieved_over_peak():
  # The README's H200 float32 PGD-AT figure: ~2.8 TFLOP per 25.7 ms step is
  # ~110 TFLOP/s, 22% of the TF32 peak.
  got = peaks.mfu(2.83e12, 0.0257, "NVIDIA H200", "float32")
  assert got == pytest.approx(2.83e12 / 0.0257 / 494e12)
  assert 0.2 < got < 0.25
  assert peaks.mfu(2.83e12, 0.0257, "cpu", "float32") is None
  assert peaks.mfu(None, 0.0257, "NVIDIA H200", "float32") is None


def test_bad_dtype_names_the_valid_ones():
  with pytest.raises(ValueError, match="float32, bfloat16"):
    peaks.peak_flops("NVIDIA H200", "float16")
