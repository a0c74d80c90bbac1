"""What XLA says a compiled function costs: FLOPs and peak memory.

``compiled`` is a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``).
Both figures are XLA's static analysis of that one executable: FLOPs from
``cost_analysis()``, memory from ``memory_analysis()`` as temp + argument +
output bytes (the buffers live at the executable's peak, donated arguments
counted once). On a GPU the allocator's own peak
(``jax.local_devices()[0].memory_stats()['peak_bytes_in_use']``) is reported
beside it where the backend has one.
"""

import jax


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count of the executable (None where the backend gives none)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # backends without the analysis
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return None if flops is None else float(flops)


def xla_peak_bytes(compiled) -> int | None:
  """temp + argument + output bytes of the executable, less what the output
  aliases from donated arguments (None where the backend gives no analysis)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  alias = getattr(m, "alias_size_in_bytes", 0) or 0
  return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - alias)


def device_peak_bytes() -> int | None:
  """The first local device's allocator peak so far (GPU / TPU; None on a CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")
