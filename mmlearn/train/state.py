"""What a run is built from, shared by the trainer and the tools that read runs back (`mmlearn.runs.restore`).

The train state, the task, the run's length and the step-0 state (the template a checkpoint restores
into) are built the same way when training and when evaluating a finished run, so they live here rather
than in `mmlearn.train.loop`: tools and the generative imputer load runs without importing the trainer.
"""

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mmlearn import data
from mmlearn.data import imbalance, pipeline
from mmlearn.errors import ConfigError
from mmlearn.tasks import TASKS
from mmlearn.tasks.contract import Task


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, checkpointed whole.

  `model_state` holds the model's mutable collections other than `params` (BatchNorm's `batch_stats`),
  `{}` for a stateless model; `ema_params` the exponential moving average of `params`, None when
  `config.ema_decay` is 0. `rng` is the base key: a step's keys are derived from it and the step
  number (`mmlearn.rngs`), so a restart replays them exactly.
  """

  step: jax.Array
  params: Any
  model_state: dict[str, Any]
  opt_state: Any
  ema_params: Any
  rng: jax.Array

  @classmethod
  def create(
    cls, variables: dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array, *, ema: bool = False
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

  def variables(self, *, ema: bool = False) -> dict[str, Any]:
    """The model's variables for evaluation: the EMA of the parameters when asked for and kept."""
    params = self.ema_params if ema and self.ema_params is not None else self.params
    return {"params": params, **self.model_state}


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, math.ceil(config.num_epochs * num_train_examples / config.batch_size))


def initial_state(
  config: ml_collections.ConfigDict,
  task: Any,
  tx: optax.GradientTransformation,
  train_source: Any,
  batch: int,
) -> TrainState:
  """The step-0 state (also the template a checkpoint is restored into): variables from `config.seed`."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  example = next(pipeline.eval_batches(train_source, batch_size=batch, max_tokens=config.dataset.max_tokens))
  variables = dict(jax.jit(task.init)(init_rng, example))
  return TrainState.create(variables, tx, state_rng, ema=config.ema_decay > 0)


def build_task(config: ml_collections.ConfigDict, train_source: Any, info: Any) -> tuple[Task, int]:
  """(the configured task, the number of training examples: an epoch of the possibly long-tailed subset).

  The training labels are read only where needed: to draw a long-tailed subset, or to count classes
  for a loss that weights them (the task calls `class_counts`), so a task that needs no labels can
  train on a dataset without them.
  """
  ratio, seed = config.dataset.imbalance_ratio, config.dataset.imbalance_seed
  num_examples = len(imbalance.training_indices(train_source, ratio, seed))

  @functools.cache
  def class_counts() -> np.ndarray:
    counts = data.class_counts(
      train_source, data.num_classes(info), imbalance_ratio=ratio, imbalance_seed=seed
    )
    logging.info("training examples per class: %s", counts.tolist())
    return counts

  tokenizer = data.dataset_tokenizer(config.dataset)
  vocab_size = None if tokenizer is None else tokenizer.vocab_size
  task = TASKS.get(config.task)(config, info=info, vocab_size=vocab_size, class_counts=class_counts)
  return task, num_examples


def check_batch_size(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  if config.batch_size > num_train_examples:
    raise ConfigError(
      f"batch_size {config.batch_size} is larger than the training split ({num_train_examples} examples): "
      "every batch would repeat examples"
    )
