"""Defect 7: does Eq. 26's grad-bound eps_i track the clean probability margin?
point='start' (KL grad at x+0.001N, CE grad at x+0.001N) vs point='clean' (CE grad at x).
Usage (from the repository root):
  python -m caat_jax.main --config=configs/digits_meta_caat.py:grad --config.num_epochs=5 \
      --workdir=/tmp/gb
  python docs/results/grad_bound_margin.py /tmp/gb [seed]
Measured (448 training points, seeds 123 / 7), Pearson / Spearman of eps_i with
the clean probability margin: start -0.550 / -0.663 (-0.580 / -0.685); clean
-0.954 / -0.967. The KL term at x + 0.001 N carries about half the signal."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from caat_jax import train
from caat_jax.caat import bounds, features
from caat_jax.data import augment as augment_lib
from caat_jax.methods import base, meta_caat
from tests.helpers import ROOT, restore_final_state

workdir = sys.argv[1]
sys.path.insert(0, ROOT)
spec = importlib.util.spec_from_file_location("cfg", f"{ROOT}/configs/digits_meta_caat.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
config = mod.get_config("grad")
config.num_epochs = 5
state, step = restore_final_state(workdir, config)
run = train.Run(config)
print("restored step", step)
variables = {"params": state.params, "batch_stats": state.batch_stats}
f = jax.jit(lambda v: run.eval_model.apply(variables, v, train=False))
ds = run.dataset
n, B, eps = 448, 64, config.attack.eps
x_all = jnp.asarray(augment_lib.to_float01(ds.train.images[:n]))
y_all = jnp.asarray(ds.train.labels[:n])
wnet = meta_caat.weighting_net(config)
key = jax.random.PRNGKey(int(sys.argv[2]) if len(sys.argv) > 2 else 123)


@jax.jit
def batch_bounds(x, y, k):
  clean = f(x)
  z, _ = features.strategy_inputs(
    clean, y, run.ctx.class_counts, state.extra["stats"], config.caat, None, False
  )
  w = wnet.apply({"params": state.extra["wnet"]}, z)
  k_adv, k_at = jax.random.split(k)
  ka, kt = base.sample_keys(k_adv, x.shape[0], None), base.sample_keys(k_at, x.shape[0], None)
  one, zero = jnp.ones(x.shape[0]), jnp.zeros(x.shape[0])
  out = {}
  for point in ("start", "clean"):
    kw = dict(eps=eps, adv_keys=ka, at_keys=kt, point=point)
    out[f"{point}/eps_i (learned alpha,beta)"] = bounds.grad_based(
      f, x, y, clean, w[:, 0], w[:, 1], **kw
    )
    out[f"{point}/g_adv only"] = bounds.grad_based(f, x, y, clean, one, zero, **kw)
    out[f"{point}/g_at only"] = bounds.grad_based(f, x, y, clean, zero, one, **kw)
  p = jax.nn.softmax(clean)
  py = jnp.take_along_axis(p, y[:, None], -1)[:, 0]
  other = jnp.max(jnp.where(jax.nn.one_hot(y, p.shape[-1]) > 0, -1.0, p), -1)
  out["margin"] = py - other
  out["alpha"] = w[:, 0]
  return out


res = {}
for i in range(0, n, B):
  o = batch_bounds(x_all[i : i + B], y_all[i : i + B], jax.random.fold_in(key, i))
  for k, v in o.items():
    res.setdefault(k, []).append(np.asarray(v))
res = {k: np.concatenate(v) for k, v in res.items()}
m = res["margin"]
print(
  f"{n} training points, batches of {B}; margin mean {m.mean():.3f}, "
  f"frac < 0.5: {(m < 0.5).mean():.3f}; "
  f"alpha mean {res['alpha'].mean():.3f} std {res['alpha'].std():.3f}"
)
print(f"{'quantity':<34} {'pearson':>8} {'spearman':>9} {'eps/eps0 mean':>14} {'std':>7}")
for k, v in res.items():
  if k in ("margin", "alpha"):
    continue
  print(
    f"{k:<34} {stats.pearsonr(v, m)[0]:8.3f} {stats.spearmanr(v, m)[0]:9.3f} "
    f"{v.mean() / eps:14.3f} {(v / eps).std():7.3f}"
  )
