"""Per-class robust evaluation (SPEC section 9, the paper's Eqs. 45-48).

For each class c: natural error, robust error under an attack (a test point
counts as robust only if it is classified correctly both clean and under the
attack, so robust >= natural), and boundary error = robust - natural. Each is
reported as the class average and the worst class.

PGD-k here is CE ascent from a uniform start in the ball, step ``eval.step_size``;
the start noise of test point i is keyed by i, so results do not depend on the
batch size or the number of devices.
"""

import functools
import json
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caat_jax import attacks, config_lib, losses
from caat_jax.data.augment import to_float01
from caat_jax.parallel import REPLICATED, SHARDED

_EVAL_SEED = 1234  # fixed: every run is attacked with the same start noise


def eval_fn(variables, batch, *, model, eps: float, step_size: float,
            attack_steps: Mapping[str, int], unroll: bool):
  """Per-device evaluation of one batch.

  Args:
    variables: classifier ``{'params', 'batch_stats'}``.
    batch: ``image`` [b, H, W, C], ``label`` [b], ``index`` [b] (position in the
      evaluated split; keys the attack's start noise).
    model: the classifier module (inference mode is used).
    eps, step_size: L-inf bound and PGD step in pixel units.
    attack_steps: attack name -> number of PGD steps, e.g. {'pgd20': 20}.
    unroll: unroll the PGD loop.
  Returns:
    dict name -> bool [b]: ``natural`` (clean correct) and, per attack,
    correct on clean *and* perturbed input.
  """
  x, y = to_float01(batch["image"]), batch["label"]
  logits_fn = lambda z: model.apply(variables, z, train=False)
  nat = losses.correct(logits_fn(x), y)
  out = {"natural": nat}
  b = x.shape[0]
  for name, k in attack_steps.items():
    base_key = jax.random.fold_in(jax.random.PRNGKey(_EVAL_SEED), k)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(batch["index"])
    x_adv = attacks.pgd(
        logits_fn, x, y, eps=jnp.full((b,), eps), step_size=jnp.full((b,), step_size),
        num_steps=k, keys=keys, start="uniform", unroll=unroll)
    out[name] = nat & losses.correct(logits_fn(x_adv), y)
  return out


def make_eval_step(parallel, model, eval_cfg, unroll: bool):
  """``step(replicated_variables, sharded_batch) -> sharded dict of bool [B]``."""
  steps = {name: config_lib.parse_eval_attack(name) for name in eval_cfg.attacks}
  fn = functools.partial(eval_fn, model=model, eps=float(eval_cfg.eps),
                         step_size=float(eval_cfg.step_size), attack_steps=steps,
                         unroll=unroll)
  return parallel.wrap(fn, (REPLICATED, SHARDED), SHARDED)


def run_eval(parallel, eval_step, variables, split, *, batch_size: int,
             num_examples: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
  """Evaluates ``split`` (an ArraySplit) in global batches of ``batch_size``.

  The batch size is rounded up to a multiple of the device count and the
  last batch is padded (the padding is dropped afterwards) so that every
  batch has one shape and one compilation serves all. Each process feeds only
  its slice of every global batch.
  Returns dict name -> bool [N] plus ``label`` [N].
  """
  n = len(split) if not num_examples else min(num_examples, len(split))
  # Round up to a multiple of the device count; the padding is dropped below.
  batch_size = -(-batch_size // parallel.num_devices) * parallel.num_devices
  results: dict[str, list[np.ndarray]] = {}
  starts = range(0, n, batch_size)
  if progress:
    from tqdm import tqdm
    starts = tqdm(starts, desc="eval", leave=False, disable=jax.process_index() != 0)
  for s in starts:
    idx = np.arange(s, s + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {"image": split.images[idx], "label": split.labels[idx].astype(np.int32),
             "index": idx.astype(np.int32)}
    batch = host_slice(batch)
    out = parallel.gather(eval_step(variables, parallel.shard(batch)))
    for k, v in out.items():
      results.setdefault(k, []).append(np.asarray(v)[valid])
  merged = {k: np.concatenate(v) for k, v in results.items()}
  merged["label"] = np.asarray(split.labels[:n])
  return merged


def host_slice(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous slice of a global batch."""
  p, count = jax.process_index(), jax.process_count()
  if count == 1:
    return dict(batch)
  return {k: np.array_split(v, count)[p] for k, v in batch.items()}


def per_class_error(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Error rate (%) per class: 100 * (1 - mean correct) over that class's points.

  correct: bool [N]; labels: int [N] -> float [num_classes] (nan for a class
  with no points).
  """
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  right = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return 100.0 * (1.0 - right / counts)


def report(outcomes: Mapping[str, np.ndarray], num_classes: int, *, attack: str,
           eps: float, method: str = "", dataset: str = "", model: str = "") -> dict:
  """SPEC section 9's result document for one attack (Eqs. 45-48).

  avg = mean over classes of the per-class error (classes weigh equally, even
  with unequal class sizes); worst = max over classes.
  """
  labels = outcomes["label"]
  nat = per_class_error(outcomes["natural"], labels, num_classes)
  rob = per_class_error(outcomes[attack], labels, num_classes)
  bnd = rob - nat
  per_class = {"natural": nat, "boundary": bnd, "robust": rob}
  return {
      "method": method, "dataset": dataset, "model": model, "attack": attack,
      "eps": float(eps), "num_examples": int(labels.shape[0]),
      "avg": {k: float(np.nanmean(v)) for k, v in per_class.items()},
      "worst": {k: float(np.nanmax(v)) for k, v in per_class.items()},
      "per_class": {k: [round(float(e), 4) for e in v] for k, v in per_class.items()},
  }


def format_table(docs: Sequence[dict], label_key: str = "attack") -> str:
  """A plain-text table: one row per document, avg and worst of each error."""
  head = (f"{label_key:<14} {'nat avg':>8} {'nat wst':>8} {'bnd avg':>8} "
          f"{'bnd wst':>8} {'rob avg':>8} {'rob wst':>8}")
  lines = [head, "-" * len(head)]
  for d in docs:
    a, w = d["avg"], d["worst"]
    lines.append(
        f"{str(d[label_key]):<14} {a['natural']:8.2f} {w['natural']:8.2f} "
        f"{a['boundary']:8.2f} {w['boundary']:8.2f} {a['robust']:8.2f} {w['robust']:8.2f}")
  return "\n".join(lines)


def format_per_class(doc: dict) -> str:
  """Per-class natural / boundary / robust errors (%) of one document."""
  pc = doc["per_class"]
  lines = [f"per class ({doc['attack']}, eps={doc['eps']:.4f}):",
           f"{'class':>5} {'natural':>8} {'boundary':>9} {'robust':>8}"]
  for c, (n, b, r) in enumerate(zip(pc["natural"], pc["boundary"], pc["robust"])):
    lines.append(f"{c:>5} {n:8.2f} {b:9.2f} {r:8.2f}")
  return "\n".join(lines)


def write_json(path: str, obj) -> None:
  """Writes atomically (temp file + rename): a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
