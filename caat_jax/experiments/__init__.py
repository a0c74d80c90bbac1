"""The paper's tables and figures as runnable experiments (``python -m
caat_jax.experiments``): ``registry`` (rows as data), ``paper`` (the
reported numbers), ``runner`` (resumable rows x seeds), ``report`` (tables
in the paper's layout, mean ± std over seeds) and ``cost`` (estimates)."""

from caat_jax.experiments.registry import EXPERIMENTS, Experiment, Row, get

__all__ = ["EXPERIMENTS", "Experiment", "Row", "get"]
