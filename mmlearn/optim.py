"""Optimizers by name, wrapped in the learning-rate schedule, optional global-norm clipping and freezing."""

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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


def clip_by_norm(max_norm: float, norm: Callable[[Any], jax.Array]) -> optax.GradientTransformation:
  """optax's `clip_by_global_norm`, with the norm computed by `norm`.

  With sharded parameters each device holds a shard of the gradient, and the global norm needs a
  reduction over devices (`DataParallel.global_norm`); optax's own would clip by the shard's norm.
  """

  def update(updates, state, params=None):
    del params
    total = norm(updates)
    scale = jnp.where(total < max_norm, 1.0, max_norm / total)
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
  cfg: ml_collections.ConfigDict,
  total_steps: int,
  *,
  norm: Callable[[Any], jax.Array] = optax.global_norm,
  train_only: str = "",
) -> optax.GradientTransformation:
  """The configured optimizer; clipping (if `grad_clip_norm` > 0) acts on the already-averaged gradient,
  by the norm `norm` computes (the trainer passes its layout's: `DataParallel.global_norm`).

  `train_only`, a regex matched from the start of parameter paths (LoRA's adapters), freezes every
  parameter it does not match, on top of the parameters `cfg.frozen` freezes."""
  make = OPTIMIZERS.get(cfg.name)
  tx = make(make_schedule(cfg, total_steps), cfg)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(clip_by_norm(cfg.grad_clip_norm, norm), tx)
  if cfg.frozen or train_only:
    labels = frozen_labels(cfg.frozen, train_only=train_only)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


def parameter_path(key_path: Any) -> str:
  """A parameter's `/`-separated path, e.g. `embed/encoder/conv0/kernel`."""
  return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in key_path)


def frozen_labels(pattern: str, *, train_only: str = "") -> Callable[[Any], Any]:
  """Labels "frozen" for the parameters whose path `pattern` matches from its start, and with
  `train_only` (a regex, matched from the start) for every parameter it does not match; "train" elsewhere.

  Frozen parameters never change: they are outside the optimizer (no weight decay, no share of the
  clipping norm, no Adam state). Their gradient is still computed and averaged over devices.
  """
  try:
    regex = re.compile(pattern) if pattern else None
  except re.error as error:
    raise ConfigError(f"optimizer.frozen {pattern!r} is not a regular expression: {error}") from None
  trained = re.compile(train_only) if train_only else None

  def frozen(path: str) -> bool:
    return bool(regex and regex.match(path)) or bool(trained and not trained.match(path))

  def labels(params: Any) -> Any:
    tree = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if frozen(parameter_path(path)) else "train", params
    )
    if regex is not None and not any(
      regex.match(parameter_path(path)) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ):
      some = [parameter_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0][:6]]
      raise ConfigError(
        f"optimizer.frozen {pattern!r} matches no parameter (paths look like {', '.join(some)})"
      )
    return tree

  return labels
