"""An evaluator: built from a classifier and the parallel wrapper, it runs
named attacks over a split and yields per-point outcomes, per-class errors
and result documents. It imports nothing from the trainer.
"""

import functools
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from caat_jax import pipeline
from caat_jax.evaluation import attacks as eval_attacks
from caat_jax.evaluation import report as report_lib
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
    self._steps = {}

  def step(self, attack_names: Sequence[str], eps: float, step_size: float,
           aa_options: Mapping | None = None):
    """``step(replicated_variables, sharded_batch) -> sharded dict of bool [B]``,
    built once per setting (no retrace across calls)."""
    key = (tuple(attack_names), float(eps), float(step_size),
           None if aa_options is None else repr(sorted(aa_options.items())))
    if key not in self._steps:
      fn = functools.partial(eval_attacks.eval_fn, model=self.model, attack_names=key[0],
                             eps=key[1], step_size=key[2], unroll=self.unroll,
                             aa_options=aa_options)
      self._steps[key] = self.parallel.wrap(fn, (REPLICATED, SHARDED), SHARDED)
    return self._steps[key]

  def outcomes(self, variables, split, attack_names: Sequence[str], *, eps: float,
               step_size: float, batch_size: int, num_examples: int = 0,
               progress: bool = False, aa_options: Mapping | None = None
               ) -> dict[str, np.ndarray]:
    """Every point's outcome: dict name -> bool [N] plus ``label`` [N].

    ``variables`` in the replicated layout; ``split`` an ``ArraySplit``.
    """
    step = self.step(attack_names, eps, step_size, aa_options)
    batches = pipeline.eval_batches(split, batch_size=batch_size, num_examples=num_examples,
                                    multiple_of=self.parallel.num_devices)
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      batches = tqdm(batches, desc="eval", leave=False, disable=jax.process_index() != 0)
    results: dict[str, list[np.ndarray]] = {}
    for batch, valid in batches:
      out = self.parallel.gather(step(variables, self.parallel.shard(batch)))
      for k, v in out.items():
        results.setdefault(k, []).append(np.asarray(v)[valid])
    merged = {k: np.concatenate(v) for k, v in results.items()}
    merged["label"] = np.asarray(split.labels[:pipeline.num_eval_points(split, num_examples)])
    return merged

  def per_class_errors(self, variables, split, attack: str, *, eps: float, step_size: float,
                       batch_size: int, num_classes: int) -> dict[str, np.ndarray]:
    """``{'natural': [C], 'robust': [C]}`` error fractions under ``attack``."""
    out = self.outcomes(variables, split, (attack,), eps=eps, step_size=step_size,
                        batch_size=batch_size)
    err = lambda k: report_lib.per_class_error(out[k], out["label"], num_classes) / 100.0
    return {"natural": err("natural"), "robust": err(attack)}

  def documents(self, variables, split, eval_cfg, num_classes: int, *,
                labels: Mapping[str, str], progress: bool = False) -> list[dict]:
    """SPEC 9 documents, one per ``eval_cfg.attacks`` entry; ``labels`` gives
    their ``method``, ``dataset`` and ``model`` fields."""
    out = self.outcomes(variables, split, eval_cfg.attacks, eps=eval_cfg.eps,
                        step_size=eval_cfg.step_size, batch_size=eval_cfg.batch_size,
                        num_examples=eval_cfg.num_examples, progress=progress)
    return [report_lib.report(out, num_classes, attack=a, eps=eval_cfg.eps, **labels)
            for a in eval_cfg.attacks]
