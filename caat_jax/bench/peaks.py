"""Peak dense FLOP/s per device kind, for the benchmark's MFU column.

MFU (model FLOPs utilisation) = the step's FLOPs (XLA's ``cost_analysis()``
of the compiled step, per device) / step time / the device's peak. The peaks
are the vendors' published dense figures (no structured sparsity), per chip:

* NVIDIA H100 / H200 SXM: 989 TFLOP/s bf16, 494 TF32 (NVIDIA H100 and H200
  datasheets, "dense" columns; the sparse figures are twice these).
* NVIDIA A100 SXM: 312 bf16, 156 TF32 (NVIDIA A100 datasheet).
* Google TPU v4: 275 bf16; v5e ("TPU v5 lite"): 197; v5p ("TPU v5"): 459;
  v6e ("TPU v6 lite", Trillium): 918 (Cloud TPU system-architecture pages).

float32 compute is measured against the TF32 peak on NVIDIA GPUs: XLA runs
float32 matmuls and convolutions on TF32 tensor cores at JAX's default
precision (the README's H200 PGD-AT step reaches ~110 TFLOP/s in float32,
above the 67 TFLOP/s of plain FP32). TPUs run float32 matmuls as bf16
passes at default precision; their float32 row uses the bf16 peak. A CPU has
no entry: its MFU is not reported.
"""

# (substring of jax's device_kind, lower case) -> {compute dtype: peak FLOP/s}
PEAK_FLOPS: dict[str, dict[str, float]] = {
  "h200": {"bfloat16": 989e12, "float32": 494e12},
  "h100": {"bfloat16": 989e12, "float32": 494e12},
  "a100": {"bfloat16": 312e12, "float32": 156e12},
  "tpu v4": {"bfloat16": 275e12, "float32": 275e12},
  "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12},
  "tpu v5": {"bfloat16": 459e12, "float32": 459e12},
  "tpu v6 lite": {"bfloat16": 918e12, "float32": 918e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The peak dense FLOP/s of one ``device_kind`` chip computing in ``dtype``
  ('float32' or 'bfloat16'), or None where the table has no entry (CPUs,
  unlisted accelerators). The longest matching key wins ('tpu v5 lite'
  before 'tpu v5')."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype {dtype!r}; valid: float32, bfloat16")
  kind = device_kind.lower()
  matches = [k for k in PEAK_FLOPS if k in kind]
  if not matches:
    return None
  return PEAK_FLOPS[max(matches, key=len)][dtype]


def mfu(flops_per_step: float | None, step_s: float, device_kind: str, dtype: str) -> float | None:
  """Achieved / peak FLOP/s of one device: ``flops_per_step`` (that device's
  share, as ``cost_analysis()`` of its compiled step reports it) over
  ``step_s``, against :func:`peak_flops`; None where either is unknown."""
  peak = peak_flops(device_kind, dtype)
  if peak is None or not flops_per_step or step_s <= 0:
    return None
  return flops_per_step / step_s / peak
