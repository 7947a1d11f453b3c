"""The train state, the run's length and the step-0 state (the template a checkpoint restores into).

Built the same way when training and when reading a finished run back (`mmlearn.runs.restore`), so they
live apart from the loop: tools load runs without importing the trainer.
"""

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from mmlearn import optim
from mmlearn.data import pipeline
from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.pretrained import loading
from mmlearn.tasks.contract import PyTree, Task, Variables
from mmlearn.train import lora


@struct.dataclass
class TrainState:
  """Everything a step reads and writes, checkpointed whole.

  `model_state` holds the model's mutable collections other than `params` (BatchNorm's `batch_stats`),
  `{}` for a stateless model; `ema_params` the exponential moving average of `params`, None when
  `config.ema_decay` is 0. `rng` is the base key: a step's keys are derived from it and the step
  number (`mmlearn.rngs`), so a restart replays them exactly.
  """

  step: jax.Array
  params: PyTree
  model_state: dict[str, PyTree]
  opt_state: optax.OptState
  ema_params: PyTree | None
  rng: jax.Array

  if TYPE_CHECKING:  # Added by `struct.dataclass` at run time.

    def replace(self, **updates: object) -> "TrainState":
      """A copy with the fields `updates` names replaced."""
      ...

  @classmethod
  def create(
    cls, variables: Variables, tx: optax.GradientTransformation, rng: jax.Array, *, ema: bool = False
  ) -> "TrainState":
    """The step-0 state from a model's variables (`{"params": ..., **collections}`, as `Task.init` gives)."""
    params = variables["params"]
    model_state = {name: value for name, value in variables.items() if name != "params"}
    return cls(
      step=jnp.int32(0),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      rng=rng,
    )

  def variables(self, *, ema: bool = False) -> dict[str, PyTree]:
    """The model's variables for evaluation: the EMA of the parameters when asked for and kept."""
    params = self.ema_params if ema and self.ema_params is not None else self.params
    return {"params": params, **self.model_state}


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, math.ceil(config.num_epochs * num_train_examples / config.batch_size))


def initial_state(
  config: ml_collections.ConfigDict,
  task: Task,
  tx: optax.GradientTransformation,
  train_source: Source,
  batch: int,
) -> TrainState:
  """The step-0 state (also the template a checkpoint is restored into): variables from `config.seed`."""
  init_rng, state_rng = init_keys(config)
  variables = dict(jax.jit(task.init)(init_rng, example_batch(config, train_source, batch)))
  variables = lora.with_adapters(variables, config, lora.adapter_rng(init_rng))  # LoRA's, if on.
  return TrainState.create(variables, tx, state_rng, ema=config.ema_decay > 0)


def make_optimizer(
  config: ml_collections.ConfigDict,
  task: Task,
  train_source: Source,
  num_steps: int,
  *,
  norm: Callable[[PyTree], jax.Array] = optax.global_norm,
) -> tuple[optax.GradientTransformation, list[loading.Tower]]:
  """(the run's optimizer, the pretrained towers its model builds).

  `config.optimizer`, with the towers that ask for it frozen and, with LoRA, only the adapters trained.
  Training and restoring build it alike: the optimizer state's structure, which a checkpoint holds,
  depends on which parameters are frozen.
  """
  towers = []
  if loading.names_towers(config):
    towers = loading.find_towers(task.init, init_keys(config)[0], example_batch(config, train_source, 1))
  optimizer = config.optimizer.copy_and_resolve_references()
  optimizer.frozen = loading.frozen_pattern(towers, config.optimizer.frozen)
  return optim.make_optimizer(optimizer, num_steps, norm=norm, train_only=lora.trained(config)), towers


def init_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(the key that initialises the model, the train state's base key), from `config.seed`."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return init_rng, state_rng


def example_batch(config: ml_collections.ConfigDict, train_source: Source, batch: int) -> dict:
  """The first `batch` training examples: what `Task.init` traces the model's shapes from."""
  return next(pipeline.eval_batches(train_source, batch_size=batch, max_tokens=config.dataset.max_tokens))


def check_batch_size(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  if config.batch_size > num_train_examples:
    raise ConfigError(
      f"batch_size {config.batch_size} is larger than the training split ({num_train_examples} examples): "
      "every batch would repeat examples"
    )
