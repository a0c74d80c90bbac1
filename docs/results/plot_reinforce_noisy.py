"""Reinforce-CAAT on 40% uniform label noise: the strategy over training.

  python docs/results/plot_reinforce_noisy.py LOOKAHEAD_WORKDIR PAPER_WORKDIR \
      docs/results/reinforce_noisy.png

Each workdir is a run of configs/digits_reinforce_caat.py:noisy (the second
with --config.reinforce.reward=paper). Reads metrics.jsonl: train/p_adv_clean_noisy
(the policy's mean p(adversary)), train/adv_ratio_clean_noisy (the drawn
adversary fraction) and train/eps_direction_clean_noisy (mean bound of
[clean adv, clean anti, corrupted adv, corrupted anti]), entry 0 clean
samples, entry 1 corrupted ones.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read(workdir):
  rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  return [r for r in rows if "train/p_adv_clean_noisy" in r]


def main(lookahead, paper, out):
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for name, workdir, style in (("lookahead", lookahead, "-"), ("paper", paper, "--")):
    rows = read(workdir)
    step = [r["step"] for r in rows]
    for i, (label, color) in enumerate((("clean", "tab:blue"), ("corrupted", "tab:red"))):
      axes[0].plot(
        step,
        [r["train/p_adv_clean_noisy"][i] for r in rows],
        style,
        color=color,
        label=f"{name}: {label}",
      )
      axes[1].plot(
        step,
        [r["train/adv_ratio_clean_noisy"][i] for r in rows],
        style,
        color=color,
        label=f"{name}: {label}",
        alpha=0.8,
      )
      for j, (d, marker) in enumerate((("adv", "^"), ("anti", "v"))):
        axes[2].plot(
          step,
          [r["train/eps_direction_clean_noisy"][2 * i + j] * 255 for r in rows],
          style,
          color=color,
          marker=marker,
          markevery=6,
          markersize=4,
          label=f"{name}: {label} {d}",
          alpha=0.8,
        )
  axes[0].set_title("policy p(adversary)")
  axes[1].set_title("adversary ratio (drawn)")
  axes[2].set_title("mean bound (x 1/255) by direction")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  axes[2].legend(fontsize=6, ncol=2)
  fig.suptitle(
    "Reinforce-CAAT, digits, 40% uniform label noise: look-ahead reward (solid) "
    "vs the paper's Eq. 34 (dashed)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(out, dpi=120)


if __name__ == "__main__":
  main(*sys.argv[1:4])
