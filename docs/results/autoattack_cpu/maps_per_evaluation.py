"""Memory maps of one process over repeated AutoAttack evaluations of one
checkpoint, with and without jax.clear_caches() between them (why
experiments/runner.py clears JAX's caches after every run).

  python docs/results/autoattack_cpu/maps_per_evaluation.py keep|clear RUN_DIR

RUN_DIR: a finished digits run (e.g. runs/digits/table6/trades-b6/seed0);
it is copied to /tmp/aa_maps/ for each evaluation. Linux only (/proc).
"""

import gc
import os
import shutil
import sys
import time

import jax

from caat_jax import evaluate


def maps():
  with open(f"/proc/{os.getpid()}/maps") as f:
    return sum(1 for _ in f)


def rss():
  with open(f"/proc/{os.getpid()}/status") as f:
    return [l for l in f if l.startswith("VmRSS")][0].split()[1]


mode, src = sys.argv[1], sys.argv[2]
print("start", maps(), rss(), flush=True)
for i in range(4):
  d = f"/tmp/aa_maps/{mode}{i}"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(src, d)
  for f in ("eval_autoattack.json",):
    if os.path.exists(os.path.join(d, f)):
      os.remove(os.path.join(d, f))
  t = time.time()
  evaluate.evaluate_checkpoint(d, ["autoattack"], num_examples=120, progress=False)
  if mode == "clear":
    jax.clear_caches()
  gc.collect()
  print(mode, i, "maps", maps(), "rss_kB", rss(), f"{time.time() - t:.0f}s", flush=True)
