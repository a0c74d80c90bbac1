"""Classifier optimiser and learning-rate schedules."""

import ml_collections
import optax

from caat_jax.checks import check, choice

SCHEDULES = ("piecewise", "cosine", "constant")
OPTIMIZERS = ("sgd",)


def validate(cfg: ml_collections.ConfigDict, num_epochs: int) -> None:
  """Checks ``config.optimizer`` (raises ``checks.ConfigError`` naming the key)."""
  choice("optimizer.name", cfg.name, OPTIMIZERS)
  choice("optimizer.schedule", cfg.schedule, SCHEDULES)
  check("optimizer.learning_rate", cfg.learning_rate > 0, cfg.learning_rate, "> 0")
  check("optimizer.momentum", 0 <= cfg.momentum < 1, cfg.momentum, "in [0, 1)")
  check("optimizer.weight_decay", cfg.weight_decay >= 0, cfg.weight_decay, ">= 0")
  check(
    "optimizer.warmup_epochs",
    0 <= cfg.warmup_epochs < num_epochs,
    cfg.warmup_epochs,
    f"in [0, num_epochs={num_epochs})",
  )
  if cfg.schedule == "piecewise":
    ok = all(0 < e for e in cfg.decay_epochs) and list(cfg.decay_epochs) == sorted(cfg.decay_epochs)
    check("optimizer.decay_epochs", ok, cfg.decay_epochs, "increasing positive epochs")


def learning_rate_schedule(
  cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
  """Per-step learning rate from ``config.optimizer``.

  piecewise: ``lr * factor^k`` after the k-th of ``decay_epochs``;
  cosine: cosine decay to 0 over the run; constant. An optional linear warmup
  over ``warmup_epochs`` precedes each.
  """
  lr = cfg.learning_rate
  total = num_epochs * steps_per_epoch
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "piecewise":
    main = optax.piecewise_constant_schedule(
      lr, {int(e * steps_per_epoch) - warmup: cfg.decay_factor for e in cfg.decay_epochs}
    )
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
  elif cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(
      f"config.optimizer.schedule={cfg.schedule!r}; valid: 'piecewise', 'cosine', 'constant'"
    )
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(
  cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum and *coupled* weight decay, as ``torch.optim.SGD``.

  The decay term ``wd * w`` is added to the gradient before momentum, which is
  what the papers' PyTorch code trains with (and what 5e-4 is tuned for).
  """
  schedule = learning_rate_schedule(cfg, steps_per_epoch, num_epochs)
  if cfg.name != "sgd":
    raise ValueError(f"config.optimizer.name={cfg.name!r}; valid: 'sgd'")
  tx = optax.chain(
    optax.add_decayed_weights(cfg.weight_decay),
    optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
  )
  return tx, schedule
