"""meta_bench's outputs: ``meta_bench.json``, ``meta_bench.md`` (a markdown
table) and ``meta_bench.png`` (fidelity against cost, one point per variant
and checkpoint)."""

import json
import math
import os

COLUMNS = (
  # (key, header, format)
  ("checkpoint", "ckpt", "{}"),
  ("step", "step", "{}"),
  ("variant", "variant", "{}"),
  ("cosine", "cos", "{:.6f}"),
  ("rel_error", "rel err", "{:.2e}"),
  ("eff_lr_ratio", "eff lr", "{:.3f}"),
  ("spearman_c", "rho(c)", "{:.3f}"),
  ("sign_agreement", "sign", "{:.3f}"),
  ("top10_overlap", "top10", "{:.2f}"),
  ("auroc_noisy", "AUROC", "{:.3f}"),
  ("bias", "bias", "{:.3f}"),
  ("std", "std", "{:.3f}"),
  ("meta_s", "meta ms", "{:.1f}"),
  ("meta_ratio", "meta x", "{:.2f}"),
  ("meta_bound_ratio", "bound x", "{:.2f}"),
  ("meta_measured_over_bound", "meas/bnd", "{:.2f}"),
  ("meta_flops_ratio", "flop x", "{:.2f}"),
  ("step_ratio", "step x", "{:.2f}"),
  ("step_bound_ratio", "step bnd x", "{:.2f}"),
  ("meta_compile_s", "compile s", "{:.1f}"),
  ("meta_peak_bytes", "peak MiB", "{:.1f}"),
  ("meta_flops", "MFLOP", "{:.1f}"),
  ("meta_units_F", "F", "{:.1f}"),
)
_SCALE = {"meta_s": 1e3, "meta_peak_bytes": 1 / 2**20, "meta_flops": 1e-6}


def _cell(row, key, fmt) -> str:
  value = row.get(key)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if key in _SCALE:
    value = value * _SCALE[key]
  return fmt.format(value)


def markdown(result: dict) -> str:
  """The rows as one markdown table, with a line saying what was measured."""
  head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
  rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
  lines = [
    f"{result['config']['method']} on {result['config']['dataset']} "
    f"({result['config']['model']}), {result['device']}; exact reference "
    f"{result['reference']}; {result['num_keys']} keys for stochastic variants.",
    "",
    head,
    rule,
  ]
  for r in result["rows"]:
    lines.append("| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |")
  lines += [
    "",
    "cos / rel err / eff lr: the Omega-gradient against the reference (eff lr = "
    "<g, g*> / |g*|^2); rho(c): Spearman of the per-sample cotangent c; sign: agreement "
    "of c_adv - c_anti; top10: overlap of the 10% largest |c|; AUROC: c_adv - c_anti "
    "for corrupted vs clean samples; bias / std: over the keys, relative to |g*|; "
    "meta x / step x: median time of the meta part / whole step over the reference's; "
    "bound x: the same ratio of the §11 forward-pass units F; meas/bnd: meta x over "
    "bound x; flop x: the ratio of XLA's FLOPs; peak MiB, MFLOP: XLA's "
    "analysis of the meta part's executable.",
  ]
  return "\n".join(lines) + "\n"


def figure(result: dict, path: str) -> None:
  """Cosine to the exact gradient against the meta part's time ratio."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  markers = {"early": "o", "mid": "s", "late": "^"}
  variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
  colors = {v: f"C{i}" for i, v in enumerate(variants)}
  for r in result["rows"]:
    x, y = r.get("meta_ratio"), r.get("cosine")
    if x is None or y is None or math.isnan(x) or math.isnan(y):
      continue
    ax.scatter(x, y, color=colors[r["variant"]], marker=markers.get(r["checkpoint"], "x"))
  for v in variants:
    ax.scatter([], [], color=colors[v], label=v)
  for c, m in markers.items():
    ax.scatter([], [], color="grey", marker=m, label=c)
  ax.set_xlabel(f"meta-part time / {result['reference']}")
  ax.set_ylabel(f"cosine to {result['reference']}")
  ax.set_title(f"meta-gradient fidelity vs cost ({result['config']['dataset']})")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _strict(value):
  """NaN -> None, so the JSON is standard."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def write(result: dict, workdir: str) -> dict:
  """Writes the three files into ``workdir``; returns their paths."""
  paths = {
    "json": os.path.join(workdir, "meta_bench.json"),
    "markdown": os.path.join(workdir, "meta_bench.md"),
    "figure": os.path.join(workdir, "meta_bench.png"),
  }
  with open(paths["json"], "w") as f:
    json.dump(_strict(result), f, indent=1, default=str)
  with open(paths["markdown"], "w") as f:
    f.write(markdown(result))
  figure(result, paths["figure"])
  return paths
