"""AutoAttack on the still-robust points only: a host-side driver.

``autoattack()`` runs every attack on full fixed-shape batches until nothing
in the batch is left, so one surviving point keeps a whole batch busy (5000
full-batch Square queries). Here the host runs the ensemble attack by
attack and, between attacks (and between the runs of an attack: APGD-T and
FAB-T targets, restarts), gathers the points still robust and re-packs them
into fixed-size buckets, so an attack's cost follows the points it still
has to attack and only a handful of shapes ever compile.

Buckets (:func:`bucket_sizes`) are ``batch_size, batch_size/r, ...`` down to
``min_size``, all multiples of ``multiple`` (the device count, for a
pmap/shard_map runner); r = 2 on an accelerator, 4 on a CPU, where each
distinct size costs a compilation per attack (seconds) and a call costs
little beyond its slots. ``n`` points take ``n // batch_size`` full buckets
and the rest goes either greedily into the largest buckets that fit, the
last one padded (fewest slots: a CPU's cost), or into the one smallest
bucket that holds it (fewest calls: an accelerator's cost at these batch
sizes), see :func:`plan`. Padding is inactive points, which no attack
touches and which keep no loop running.

Results per point equal ``autoattack()``'s on the same keys: every attack
is per-point (vmapped gradients, per-point PRNG keys folded from the point's
own key, targets from its own clean logits), a point is attacked by run j
iff no earlier run broke it in both, and its example is the first run's
that broke it.

The attack itself is supplied by a *runner*, a host callable over numpy
arrays, so the caller chooses how it runs on devices:

  ``runner(name, x, labels, eps, keys, active, runs) -> (x_adv, robust)``

with x [b, H, W, C] float32, labels [b] int32, eps [b] float32, keys [b, 2]
uint32 (raw PRNG keys), active bool [b], runs int32 [2] = (first, stop) (the
range of :func:`~caat_jax.attacks.autoattack.num_runs`), returning numpy
x_adv [b, H, W, C] and robust bool [b]. It must compute
``run_attack(name, logits_fn, x, labels, eps=eps, keys=keys, active=active,
runs=runs, **options[name])``; :func:`local_runner` is that under ``jit`` on
one device, :func:`pmap_runner` under ``pmap`` (``runs`` replicated).
"""

import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax.attacks.autoattack import STANDARD, num_runs, run_attack, stage_keys
from caat_jax.attacks.common import LogitsFn
from caat_jax.attacks.sanity import check_num_classes

Runner = Callable[..., tuple[np.ndarray, np.ndarray]]


def options_key(options: Mapping[str, Mapping] | None) -> str:
  """A hashable, order-independent key of per-attack ``options`` (for caches
  of compiled runners)."""
  return repr(sorted((k, sorted(dict(v).items())) for k, v in (options or {}).items()))


def bucket_sizes(
  batch_size: int, min_size: int = 1, multiple: int = 1, ratio: int = 2
) -> list[int]:
  """``batch_size, batch_size // ratio, ...`` down to ``min_size``, each
  rounded up to a multiple of ``multiple``; distinct, largest first."""
  if batch_size % multiple:
    raise ValueError(f"batch_size {batch_size} is not a multiple of {multiple}")
  if ratio < 2:
    raise ValueError(f"ratio {ratio}: must be >= 2")
  sizes, b = [], batch_size
  while True:
    s = -(-max(b, min_size, 1) // multiple) * multiple
    if not sizes or s < sizes[-1]:
      sizes.append(s)
    if b <= min_size or b <= 1:
      return sizes
    b //= ratio


PACKS = ("auto", "slots", "calls")


def resolve_pack(pack: str) -> str:
  """``'auto'``: ``'slots'`` on a CPU (compute-bound: a call costs in
  proportion to its slots), ``'calls'`` on an accelerator (latency-bound at
  evaluation batch sizes: a 5000-query Square loop on 8 points takes as long
  as on 64, so the number of sequential calls is what costs)."""
  if pack not in PACKS:
    raise ValueError(f"pack {pack!r}; valid: {', '.join(PACKS)}")
  if pack == "auto":
    return "slots" if jax.default_backend() == "cpu" else "calls"
  return pack


def bucket_ratio(pack: str) -> int:
  """Between successive bucket sizes: 4 when packing for the fewest slots
  (a CPU: each distinct size is one more compilation per attack, and the
  padding stays under one smallest bucket), 2 for the fewest calls."""
  return 4 if resolve_pack(pack) == "slots" else 2


def plan(n: int, sizes: Sequence[int], pack: str = "slots") -> list[int]:
  """The bucket sizes that hold ``n`` points: full largest buckets, then the
  rest. ``pack='slots'``: the rest in the largest buckets that fit it, the
  last padded (at most ``sizes[-1] - 1`` padded slots in all).
  ``pack='calls'``: the rest in one bucket, the smallest that holds it (as
  few calls as the fixed batches make, padding under half that bucket or
  ``sizes[-1]``)."""
  if pack not in ("slots", "calls"):
    raise ValueError(f"pack {pack!r}; valid: slots, calls (resolve 'auto' first)")
  if pack == "calls":
    full, rest = divmod(n, sizes[0])
    return [sizes[0]] * full + ([min(s for s in sizes if s >= rest)] if rest else [])
  out, left = [], n
  while left > 0:
    fit = [s for s in sizes if s <= left]
    s = fit[0] if fit else sizes[-1]
    out.append(s)
    left -= s
  return out


def local_runner(
  logits_fn: LogitsFn, options: Mapping[str, Mapping] | None = None, unroll: int = 1
) -> Runner:
  """A runner on one device: ``run_attack`` under ``jit``, one compilation
  per (attack, bucket size); ``runs`` is traced."""
  options = {k: dict(v) for k, v in (options or {}).items()}
  cache = {}

  def runner(name, x, labels, eps, keys, active, runs):
    if name not in cache:
      cache[name] = jax.jit(
        lambda x, y, e, k, a, r, name=name: run_attack(
          name,
          logits_fn,
          x,
          y,
          eps=e,
          keys=k,
          active=a,
          runs=(r[0], r[1]),
          unroll=unroll,
          **options.get(name, {}),
        )
      )
    res = cache[name](x, labels, eps, keys, active, runs)
    return np.asarray(res.x_adv), np.asarray(res.robust)

  return runner


def pmap_runner(
  logits_fn: LogitsFn, options: Mapping[str, Mapping] | None = None, unroll: int = 1, devices=None
) -> Runner:
  """A runner over the local devices with ``pmap``: bucket sizes must be
  multiples of the device count (``bucket_sizes(..., multiple=n)``)."""
  devices = devices or jax.local_devices()
  nd = len(devices)
  options = {k: dict(v) for k, v in (options or {}).items()}
  cache = {}

  def runner(name, x, labels, eps, keys, active, runs):
    if name not in cache:
      cache[name] = jax.pmap(
        lambda x, y, e, k, a, r, name=name: tuple(
          run_attack(
            name,
            logits_fn,
            x,
            y,
            eps=e,
            keys=k,
            active=a,
            runs=(r[0], r[1]),
            unroll=unroll,
            **options.get(name, {}),
          )
        ),
        in_axes=(0, 0, 0, 0, 0, None),
        devices=devices,
      )
    split = lambda v: v.reshape((nd, v.shape[0] // nd) + v.shape[1:])
    x_adv, robust = cache[name](*map(split, (x, labels, eps, keys, active)), runs)
    return (np.asarray(x_adv).reshape(x.shape), np.asarray(robust).reshape(-1))

  return runner


def _pad(v: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to ``size`` with copies of row 0 (finite, valid
  inputs for the model; their ``active`` flag is False)."""
  if len(v) == size:
    return v
  return np.concatenate([v, np.repeat(v[:1], size - len(v), axis=0)])


def autoattack_compact(
  runner: Runner,
  x,
  labels,
  *,
  eps,
  keys,
  clean_correct,
  num_classes: int,
  attacks: Sequence[str] = STANDARD,
  options: Mapping[str, Mapping] | None = None,
  batch_size: int = 256,
  min_size: int = 8,
  multiple: int = 1,
  split_runs: bool = True,
  pack: str = "auto",
  ratio: int | None = None,
  log: Callable[[str], None] | None = None,
):
  """The AutoAttack ensemble over ``N`` host points, attacking only the
  still-robust ones in re-packed buckets.

  Args:
    runner: see the module docstring (:func:`local_runner`, :func:`pmap_runner`).
    x: clean images [N, H, W, C] float32 in [0, 1] (numpy).
    labels: [N] int.
    eps: L-inf bound, scalar or [N].
    keys: [N] per-point PRNG keys (raw, [N, 2] uint32), e.g. folded from each
      point's index in the test set: the same keys give ``autoattack()``'s
      results whatever the bucketing.
    clean_correct: bool [N], the clean predictions' correctness (the caller
      computes it with the natural accuracy).
    num_classes: the model's number of classes (checked for the DLR losses).
    attacks, options: as ``autoattack()``; ``options`` must be the runner's.
    batch_size, min_size, multiple: the buckets (:func:`bucket_sizes`).
    split_runs: re-pack between the runs of an attack too (targets and
      restarts), not only between attacks.
    pack: how the points left fill the buckets (:func:`plan`): ``'slots'``,
      ``'calls'`` or ``'auto'`` (:func:`resolve_pack`). The flags and
      examples do not depend on it, only the cost.
    ratio: between successive bucket sizes (:func:`bucket_sizes`); default
      :func:`bucket_ratio` of ``pack``.
    log: called with one line per attack (default silent).
  Returns:
    (x_adv [N, H, W, C], robust bool [N], stages, stats): ``stages`` maps
    'clean' and each attack to the robust flags after it (cumulative, as
    ``autoattack()``); ``stats`` maps each attack to ``points`` (points
    attacked, summed over its runs), ``slots`` (bucket slots computed),
    ``calls`` (runner calls) and ``seconds``.
  """
  check_num_classes(num_classes, attacks)
  pack = resolve_pack(pack)
  options = dict(options or {})
  x = np.asarray(x, np.float32)
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  eps = np.broadcast_to(np.asarray(eps, np.float32), (n,)).copy()
  keys = jnp.asarray(keys)
  sizes = bucket_sizes(batch_size, min_size, multiple, ratio or bucket_ratio(pack))
  x_adv = x.copy()
  robust = np.asarray(clean_correct, bool).copy()
  stages, stats = {"clean": robust.copy()}, {}
  for i, name in enumerate(attacks):
    keys_i = np.asarray(
      jax.random.key_data(stage_keys(keys, i))
      if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
      else stage_keys(keys, i)
    )
    total = num_runs(name, num_classes, options.get(name))
    ranges = [(j, j + 1) for j in range(total)] if split_runs else [(0, total)]
    points = slots = calls = 0
    start = time.perf_counter()
    for first, stop in ranges:
      idx = np.flatnonzero(robust)
      if not len(idx):
        break
      offset = 0
      for size in plan(len(idx), sizes, pack):
        chunk = idx[offset : offset + size]
        offset += size
        active = _pad(np.ones(len(chunk), bool), size)
        active[len(chunk) :] = False
        out_x, out_r = runner(
          name,
          _pad(x[chunk], size),
          _pad(labels[chunk], size),
          _pad(eps[chunk], size),
          _pad(keys_i[chunk], size),
          active,
          np.array([first, stop], np.int32),
        )
        broken = ~out_r[: len(chunk)]
        x_adv[chunk[broken]] = out_x[: len(chunk)][broken]
        robust[chunk[broken]] = False
        points += len(chunk)
        slots += size
        calls += 1
    stats[name] = dict(points=points, slots=slots, calls=calls, seconds=time.perf_counter() - start)
    stages[name] = robust.copy()
    if log:
      log(
        f"{name}: {robust.sum()}/{n} robust, {points} points in {slots} slots, "
        f"{calls} calls, {stats[name]['seconds']:.1f} s"
      )
  return x_adv, robust, stages, stats
