"""Every variant's meta-gradient on one captured problem, against ``nested_grad``.

For a ``capture.Captured`` problem each variant of ``meta.VARIANTS`` (its
options read from ``config.meta``) computes

* the Omega-gradient, compared with ``nested_grad``'s (``fidelity.gradient_metrics``);
* the per-sample cotangent c = d meta / d w: the same variant on the problem
  with ``weights_fn`` the identity and Omega = w, the step's weights
  (``fidelity.cotangent_metrics``);
* for a stochastic variant (``Variant.stochastic``), both over ``keys``
  (``MetaProblem.key``), the metrics averaged over the keys, and the bias
  and spread of its Omega-gradient (``fidelity.bias_and_std``).

Each variant's own function is compiled (``lift``: the arrays the captured
problem closes over become arguments of the executable, not constants), so
its compile time, median run time, XLA FLOPs and peak memory are its own.
"""

import dataclasses
import statistics
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from caat_jax import meta
from caat_jax.bench import xla
from caat_jax.meta_bench import cost, fidelity

REFERENCE = "nested_grad"


class Lifted(NamedTuple):
  """A compiled function whose closed-over arrays are its first argument."""

  compiled: Any
  consts: list
  compile_s: float

  def __call__(self, *args):
    return self.compiled(self.consts, *args)


def lift(fn, *args) -> Lifted:
  """Compiles ``fn(*args)`` with the arrays it closes over passed as
  arguments (``jax.make_jaxpr``'s constants), so XLA neither folds them nor
  leaves them out of the executable's argument bytes."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  treedef = jax.tree.structure(out_shape)

  def lifted(consts, *a):
    return jax.tree.unflatten(
      treedef, jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(a))
    )

  t = time.perf_counter()
  compiled = jax.jit(lifted).lower(closed.consts, *args).compile()
  return Lifted(compiled, list(closed.consts), time.perf_counter() - t)


def median_seconds(call, args, repeats: int) -> float:
  """Median wall time of ``call(*args)`` over ``repeats`` runs after one warm-up."""
  jax.block_until_ready(call(*args))
  times = []
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    jax.block_until_ready(call(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def variant_fn(name: str, meta_cfg):
  """(Variant, fn) of ``name``, its options bound from ``config.meta``."""
  v = meta.get(name)
  return v, v.make(**meta.options_from(meta_cfg, v))


def _gradient_fns(problem, fn, stochastic: bool):
  """(Omega -> grad, w -> c) of one variant on ``problem``, each taking a
  key as its last argument when the variant is stochastic."""
  c_problem = dataclasses.replace(problem, weights_fn=lambda w: w)

  def on(p):
    if stochastic:
      return lambda omega, params, key: fn(dataclasses.replace(p, key=key), omega, params)[0]
    return lambda omega, params: fn(p, omega, params)[0]

  return on(problem), on(c_problem)


def _host(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


def probe_variant(
  cap, name: str, meta_cfg, exact: dict, *, keys=None, repeats: int = 5
) -> tuple[dict, dict]:
  """Fidelity and meta-part cost of variant ``name`` on ``cap``.

  ``exact``: ``{'g': Omega-gradient, 'c': cotangent}`` of the reference
  (host arrays), or None when ``name`` is the reference being computed.
  Returns (row, {'g': ..., 'c': ...}: this variant's estimates, key-averaged).
  """
  v, fn = variant_fn(name, meta_cfg)
  p = cap.problem
  g_fn, c_fn = _gradient_fns(p, fn, v.stochastic)
  w = p.weights_fn(cap.omega)
  key_list = list(keys) if v.stochastic else [None]
  extra = lambda k: (k,) if v.stochastic else ()
  g_lifted = lift(g_fn, cap.omega, cap.params, *extra(key_list[0]))
  c_lifted = lift(c_fn, w, cap.params, *extra(key_list[0]))
  gs = [_host(g_lifted(cap.omega, cap.params, *extra(k))) for k in key_list]
  cs = [np.asarray(c_lifted(w, cap.params, *extra(k)), np.float64) for k in key_list]
  row = {
    "variant": name,
    "stochastic": bool(v.stochastic),
    "options": {k: plain(meta_cfg[k]) for k in v.options},
    "num_keys": len(key_list) if v.stochastic else 0,
    "meta_compile_s": g_lifted.compile_s,
    "meta_s": median_seconds(g_lifted, (cap.omega, cap.params, *extra(key_list[0])), repeats),
    "meta_peak_bytes": xla.xla_peak_bytes(g_lifted.compiled),
    "meta_flops": xla.xla_flops(g_lifted.compiled),
    "grad_norm": float(np.linalg.norm(np.mean(gs, 0))),
  }
  if exact is None:
    exact = {"g": gs[0], "c": cs[0]}
  per_key = [
    dict(
      fidelity.gradient_metrics(g, exact["g"]),
      **fidelity.cotangent_metrics(c, exact["c"], cap.corrupted),
    )
    for g, c in zip(gs, cs)
  ]
  row.update({k: float(np.mean([m[k] for m in per_key])) for k in per_key[0]})
  row["auroc_noisy_exact"] = (
    fidelity.auroc(fidelity.direction_score(exact["c"]), cap.corrupted)
    if cap.corrupted is not None
    else float("nan")
  )
  if v.stochastic:
    row["bias"], row["std"] = fidelity.bias_and_std(np.stack(gs), exact["g"])
  else:
    row["bias"], row["std"] = float("nan"), float("nan")
  return row, {"g": np.mean(gs, 0), "c": np.mean(cs, 0)}


def plain(value):
  return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def probe_checkpoint(
  cap, names, meta_cfg, *, keys, repeats: int = 5, on_row=None, reuse_cap=None
) -> list[dict]:
  """``probe_variant`` for the reference, then every name in ``names`` (the
  reference's row first; it is always measured, the ratios need it). A
  name ``'<variant>@reuse_step'`` is that variant on ``reuse_cap``, the
  same step captured under ``meta.schedule=reuse_step`` (its look-ahead
  point the real update), against the same exact gradient; a name
  ``'<variant>[option=value;...]'`` sets those of its options
  (``cost.parse_name``)."""
  ref_row, exact = probe_variant(cap, REFERENCE, meta_cfg, None, keys=keys, repeats=repeats)
  rows = [ref_row]
  if on_row is not None:
    on_row(ref_row)
  for name in names:
    if name == REFERENCE:
      continue
    variant, schedule = cost.split_name(name)
    on = cap if schedule is None else reuse_cap
    if on is None:
      raise ValueError(f"{name}: needs the step captured under meta.schedule={schedule!r}")
    row, _ = probe_variant(
      on, variant, cost.row_meta(meta_cfg, name), exact, keys=keys, repeats=repeats
    )
    row["variant"] = name
    rows.append(row)
    if on_row is not None:
      on_row(row)
  return rows
