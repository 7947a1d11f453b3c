"""The task contract: what the trainer, the evaluators and the scripts may rely on, in one place.

A task bundles a model, its loss and its evaluation, so one training loop serves classification,
retrieval and generation alike (scenic's model objects, big_vision's evaluators). Tasks are registered
by name in `mmlearn.tasks.TASKS` and built as `Task(config, *, info, vocab_size, class_counts)`: `info`
is the dataset's `tfds.core.DatasetInfo` (features, class names), `vocab_size` its tokenizer's size
(None without text), `class_counts` a function returning the training split's count of each class (call
it only if the task needs it: it reads every training label).

Models are handled through Flax's variables, `{"params": ..., **collections}`: `init` returns them and
every other method takes them, so a model with BatchNorm (`batch_stats`) needs nothing special. `loss`
returns the updated mutable collections as its third value (`{}` for a stateless model); the trainer
differentiates with respect to `variables["params"]` only.

`loss` is per-device code: it sees the device's share of the global batch and returns that share's
loss, so that the mean over devices is the global loss (the trainer `pmean`s the gradients). It is
always given the step (for schedules inside the loss, e.g. KL annealing) and one random key per
example, keyed by the example's index in the global batch (`mmlearn.rngs`), so a stochastic loss gives
the same result on any number of devices. Dropout takes `dropout_rng`, one key per device (None:
no dropout, e.g. in tests).
"""

from collections.abc import Iterable
from typing import Any, Protocol

import flax.linen as nn
import jax


class Evaluator(Protocol):
  def run(self, variables: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """`(metric_name, value)` pairs for one split, names prefixed with the split (`test/accuracy`)."""


class Task(Protocol):
  # The metric a run's final summary line leads with, without its split prefix (e.g. "accuracy").
  summary_metric: str
  # True when the loss is a mean of per-example terms, so a batch's gradient is the mean of its equal
  # chunks' gradients (`config.microbatch_size`); False for losses that couple examples (in-batch negatives).
  separable_loss: bool

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    """The initial variables (`{"params": ..., **collections}`), given one batch in the pipeline's format."""

  def loss(
    self,
    variables: dict[str, Any],
    batch: dict[str, Any],
    rng: jax.Array,
    *,
    step: jax.Array,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """(scalar loss, metrics, updated collections) of this device's examples; `rng`: one key per example."""

  def evaluator(
    self, par: Any, source: Any, *, split: str, batch_size: int, max_tokens: int, transform: Any = None
  ) -> Evaluator:
    """An evaluator of `split` (`source`); `transform` is `eval_batches`' (e.g. missing modalities)."""


def apply_for_training(
  model: nn.Module, variables: dict[str, Any], *args: Any, dropout_rng: jax.Array | None, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
  """`model.apply(..., train=True)` with every non-parameter collection mutable: (output, updated ones)."""
  mutable = [name for name in variables if name != "params"]
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  if not mutable:
    return model.apply(variables, *args, train=True, rngs=rngs, **kwargs), {}
  out, updated = model.apply(variables, *args, train=True, rngs=rngs, mutable=mutable, **kwargs)
  return out, dict(updated)
