"""An evaluator: built from a classifier and the parallel wrapper, it runs
named attacks over a split and yields per-point outcomes, per-class errors
and result documents. It imports nothing from the trainer.

PGD runs per batch (``attacks.eval_fn``); the AutoAttack family runs
compacted on the still-robust points (``ensemble``). Every attack's
examples are re-classified before they count (``verification`` in the
documents), and the AutoAttack family's runs carry the reference's sanity
warnings (``warnings``).
"""

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from caat_jax import pipeline
from caat_jax.attacks import compact, sanity, verify
from caat_jax.data.augment import to_float01
from caat_jax.evaluators import ensemble, named_attacks, per_class
from caat_jax.parallel import REPLICATED, SHARDED, Parallel


class Evaluator:
  """Per-class robust evaluation of one classifier architecture.

  Attributes:
    parallel: the run's ``Parallel`` (pmap or shard_map, several hosts).
    model: the classifier module, built without a device axis (inference
      mode only), float32.
    unroll: unroll PGD loops.
  """

  def __init__(self, parallel: Parallel, model, unroll: bool):
    self.parallel, self.model, self.unroll = parallel, model, unroll
    self._steps, self._runners, self._verifiers = {}, {}, {}

  def step(
    self,
    attack_names: Sequence[str],
    eps: float,
    step_size: float,
    aa_options: Mapping | None = None,
  ):
    """``step(replicated_variables, sharded_batch) -> sharded dict``: clean and
    PGD outcomes of one batch (``attacks.eval_fn``), built once per setting
    (no retrace across calls)."""
    key = (
      tuple(attack_names),
      float(eps),
      float(step_size),
      None if aa_options is None else repr(sorted(aa_options.items())),
    )
    if key not in self._steps:
      fn = functools.partial(
        named_attacks.eval_fn,
        model=self.model,
        attack_names=key[0],
        eps=key[1],
        step_size=key[2],
        unroll=self.unroll,
        aa_options=aa_options,
      )
      self._steps[key] = self.parallel.wrap(fn, (REPLICATED, SHARDED), SHARDED)
    return self._steps[key]

  def run(
    self,
    variables,
    split,
    attack_names: Sequence[str],
    *,
    eps: float,
    step_size: float,
    batch_size: int,
    num_examples: int = 0,
    progress: bool = False,
    aa_options: Mapping | None = None,
  ) -> tuple[dict[str, np.ndarray], dict]:
    """Every point's outcome, and what the evaluation found about itself.

    ``variables`` in the replicated layout; ``split`` an ``ArraySplit``.
    Returns (outcomes, info): outcomes maps ``label`` [N], ``natural`` and
    each attack to bool [N] (robust: correct clean and on its re-classified
    example), and ``autoattack/<attack>`` to the ensemble's flags after each
    attack; info maps ``verification`` (attack -> ``verify.FIELDS``
    summary), ``stages`` (AutoAttack-family name -> attack -> bool [N]),
    ``stats`` (compaction: points, slots, calls, seconds per attack) and
    ``warnings`` (attack -> list of strings).
    """
    names = tuple(attack_names)
    named_attacks.check_names(names, "attacks")
    aa_names = [a for a in names if a in named_attacks.AA_FAMILY]
    pgd_names = tuple(a for a in names if a not in named_attacks.AA_FAMILY)
    n = pipeline.num_eval_points(split, num_examples)
    labels = np.asarray(split.labels[:n]).astype(np.int32)
    info = {"verification": {}, "stages": {}, "stats": {}, "warnings": {}}
    common, randomised = [], []
    if aa_names:  # the reference's checks first: an attack that cannot run refuses here
      x = np.asarray(to_float01(jax.numpy.asarray(split.images[:n])))
      wanted = tuple(
        dict.fromkeys(a for name in aa_names for a in named_attacks.ensemble_attacks(name))
      )
      common, randomised = ensemble.preflight(
        self.parallel,
        self.model,
        variables,
        x,
        labels,
        wanted,
        options=aa_options,
        randomised_check=any(a != named_attacks.AUTOATTACK_RAND for a in aa_names),
      )

    out, partials = self._batches(
      variables,
      split,
      pgd_names=pgd_names,
      eps=eps,
      step_size=step_size,
      batch_size=batch_size,
      num_examples=num_examples,
      progress=progress,
    )
    for name in pgd_names:
      info["verification"][name] = verify.merge_summaries(partials[name])
      info["warnings"][name] = verify.problems(info["verification"][name], eps)

    natural_acc = float(np.mean(out["natural"])) if n else 0.0
    keys = np.asarray(named_attacks.aa_keys(np.arange(n)))
    for name in aa_names:
      options = named_attacks.ensemble_options(name, aa_options)
      x_adv, robust, stages, stats = compact.autoattack_compact(
        ensemble.make_runner(self.parallel, self.model, variables, options, self._runners),
        x,
        labels,
        eps=eps,
        keys=keys,
        clean_correct=out["natural"],
        num_classes=self._num_classes(variables, x[:1]),
        attacks=named_attacks.ensemble_attacks(name),
        options=options,
        batch_size=self._bucket(batch_size),
        min_size=max(ensemble.MIN_BUCKET, self.parallel.num_devices),
        multiple=self.parallel.num_devices,
        log=lambda line, name=name: logging.info("%s: %s", name, line),
      )
      checked, clean, summary = ensemble.verify_all(
        self.parallel,
        self.model,
        variables,
        x,
        labels,
        x_adv,
        robust,
        eps=eps,
        batch_size=batch_size,
        cache=self._verifiers,
      )
      out[name] = checked
      if len(named_attacks.ensemble_attacks(name)) > 1:  # autoattack, autoattack-rand
        out.update({f"{name}/{k}": v for k, v in stages.items() if k != "clean"})
      info["verification"][name] = summary
      info["stages"][name], info["stats"][name] = stages, stats
      found = list(common) + verify.problems(summary, eps)
      if name != named_attacks.AUTOATTACK_RAND:
        found = randomised + found
      # The same model on the same points, called again after the attacks:
      # a lower clean accuracy means it is not one fixed function.
      found += sanity.check_clean_accuracy(natural_acc, float(np.mean(clean)) if n else 0.0)
      if name == named_attacks.AUTOATTACK:
        found += ensemble.stage_warnings(stages)
      info["warnings"][name] = found
    for name, found in info["warnings"].items():
      for w in found:
        logging.warning("%s: %s", name, w)
    out["label"] = labels
    return out, info

  def _bucket(self, batch_size: int) -> int:
    nd = self.parallel.num_devices
    return -(-batch_size // nd) * nd

  def _num_classes(self, variables, x1) -> int:
    if getattr(self.model, "num_classes", None):
      return int(self.model.num_classes)
    host = self.parallel.fetch(variables)
    return int(self.model.apply(host, x1, train=False).shape[-1])

  def _batches(
    self, variables, split, *, pgd_names, eps, step_size, batch_size, num_examples, progress
  ):
    """Clean and PGD outcomes over the split, and PGD's verification partials."""
    step = self.step(pgd_names, eps, step_size)
    batches = pipeline.eval_batches(
      split, batch_size=batch_size, num_examples=num_examples, multiple_of=self.parallel.num_devices
    )
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top

      batches = tqdm(batches, desc="eval", leave=False, disable=jax.process_index() != 0)
    results, partials = {}, {name: [] for name in pgd_names}
    for batch, valid in batches:
      batch = dict(batch, valid=pipeline.host_slice({"v": valid})["v"])
      out = self.parallel.gather(step(variables, self.parallel.shard(batch)))
      for name in pgd_names:
        prefix = f"{named_attacks.VERIFY_PREFIX}{name}/"
        partials[name].append({f: out.pop(prefix + f) for f in verify.FIELDS})
      for k, v in out.items():
        results.setdefault(k, []).append(np.asarray(v)[valid])
    return {k: np.concatenate(v) for k, v in results.items()}, partials

  def outcomes(
    self,
    variables,
    split,
    attack_names: Sequence[str],
    *,
    eps: float,
    step_size: float,
    batch_size: int,
    num_examples: int = 0,
    progress: bool = False,
    aa_options: Mapping | None = None,
  ) -> dict[str, np.ndarray]:
    """Every point's outcome: dict name -> bool [N] plus ``label`` [N] (see
    :meth:`run`)."""
    return self.run(
      variables,
      split,
      attack_names,
      eps=eps,
      step_size=step_size,
      batch_size=batch_size,
      num_examples=num_examples,
      progress=progress,
      aa_options=aa_options,
    )[0]

  def per_class_errors(
    self,
    variables,
    split,
    attack: str,
    *,
    eps: float,
    step_size: float,
    batch_size: int,
    num_classes: int,
  ) -> dict[str, np.ndarray]:
    """``{'natural': [C], 'robust': [C]}`` error fractions under ``attack``."""
    out = self.outcomes(
      variables, split, (attack,), eps=eps, step_size=step_size, batch_size=batch_size
    )
    err = lambda k: per_class.per_class_error(out[k], out["label"], num_classes) / 100.0
    return {"natural": err("natural"), "robust": err(attack)}

  def evaluate(
    self,
    variables,
    split,
    attack_names: Sequence[str],
    num_classes: int,
    *,
    eps: float,
    step_size: float,
    batch_size: int,
    num_examples: int = 0,
    labels: Mapping[str, str] | None = None,
    progress: bool = False,
    aa_options: Mapping | None = None,
  ) -> tuple[list[dict], dict]:
    """(documents, outcomes): one docs/method.md §9 document per attack with its
    ``verification`` and ``warnings`` (and, for the AutoAttack family,
    ``stages``, robust error % after each attack, and ``compaction``)."""
    out, info = self.run(
      variables,
      split,
      attack_names,
      eps=eps,
      step_size=step_size,
      batch_size=batch_size,
      num_examples=num_examples,
      progress=progress,
      aa_options=aa_options,
    )
    docs = []
    for a in attack_names:
      d = per_class.report(out, num_classes, attack=a, eps=eps, **dict(labels or {}))
      d["verification"] = info["verification"][a]
      d["warnings"] = info["warnings"][a]
      # attacks and re-classification ran the model with this compute dtype,
      # whatever the run trained with (docs/method.md §9: always float32)
      d["compute_dtype"] = jnp.dtype(getattr(self.model, "dtype", jnp.float32)).name
      if a in info["stages"]:
        d["stages"] = {
          k: 100.0 * (1.0 - float(np.mean(v))) for k, v in info["stages"][a].items() if k != "clean"
        }
        d["compaction"] = info["stats"][a]
      docs.append(d)
    return docs, out

  def documents(
    self,
    variables,
    split,
    eval_cfg,
    num_classes: int,
    *,
    labels: Mapping[str, str],
    progress: bool = False,
  ) -> list[dict]:
    """docs/method.md §9 documents, one per ``eval_cfg.attacks`` entry; ``labels`` gives
    their ``method``, ``dataset`` and ``model`` fields."""
    return self.evaluate(
      variables,
      split,
      eval_cfg.attacks,
      num_classes,
      eps=eval_cfg.eps,
      step_size=eval_cfg.step_size,
      batch_size=eval_cfg.batch_size,
      num_examples=eval_cfg.num_examples,
      labels=labels,
      progress=progress,
    )[0]
