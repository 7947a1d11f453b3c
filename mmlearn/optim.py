"""Optimizers by name, wrapped in the learning-rate schedule and optional global-norm clipping."""

import ml_collections
import optax

from mmlearn.errors import ConfigError
from mmlearn.registry import Registry

OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum; `weight_decay` is L2 on the loss, as PyTorch's SGD(weight_decay=...) applies it."""
  sgd = optax.sgd(lr, momentum=cfg.momentum or None)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), sgd) if cfg.weight_decay else sgd


@OPTIMIZERS.register("adam")
def _adam(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam; `weight_decay` is L2 on the loss (coupled); use adamw for decoupled decay."""
  adam = optax.adam(lr)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), adam) if cfg.weight_decay else adam


@OPTIMIZERS.register("adamw")
def _adamw(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to 0 (or constant) over the remaining steps."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1))
  if cfg.schedule == "constant":
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
        optax.constant_schedule(cfg.learning_rate),
      ],
      [warmup],
    )
  raise ConfigError(f"unknown learning-rate schedule {cfg.schedule!r}; known: constant, cosine")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer; clipping (if `grad_clip_norm` > 0) acts on the already-averaged gradient."""
  make = OPTIMIZERS.get(cfg.name)
  tx = make(make_schedule(cfg, total_steps), cfg)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx
