"""Multimodal classification: encoders per modality -> fusion -> MLP head, softmax cross-entropy.

The task contract every task follows (the trainer relies on nothing else):
  - `Task(config, *, info, vocab_size)`: `info` is the dataset's `tfds.core.DatasetInfo` (features, class
    names), `vocab_size` its tokenizer's size (None without text).
  - `init(rng, batch) -> params`
  - `loss(params, batch, rng) -> (scalar loss, metrics dict)`: per-device code, the device's share of the
    global-batch loss, so that the mean over devices is the global loss; the trainer `pmean`s gradients.
  - `evaluator(par, source, *, split, batch_size, max_tokens) -> Evaluator` whose `run(params)` yields
    `(metric_name, value)` pairs for one split.

Classification evaluates with `SplitEvaluator`, which sums per-batch statistics:
  - `eval_sums(params, batch) -> dict of per-device sums`, weighted by `batch["weight"]` (0 = padding).
  - `summarize(sums) -> dict of metrics` from sums accumulated over a whole split.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmlearn import parallel as parallel_lib
from mmlearn.evaluate import SplitEvaluator
from mmlearn.models.classifier import build_classifier
from mmlearn.tasks.registry import TASKS


@TASKS.register("classification")
class ClassificationTask:
  """Classes come from the dataset's `label` feature (`info`), or explicitly from `num_classes`."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: Any = None,
    vocab_size: int | None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
  ):
    if num_classes is None:
      if info is None:
        raise ValueError("classification needs the dataset info or num_classes")
      label = info.features["label"]
      num_classes, class_names = label.num_classes, class_names or list(label.names)
    self.num_classes = num_classes
    self.class_names = class_names or [str(i) for i in range(num_classes)]
    self.model = build_classifier(config.model, num_classes=num_classes, vocab_size=vocab_size)

  def evaluator(
    self, par: parallel_lib.DataParallel, source: Any, *, split: str, batch_size: int, max_tokens: int
  ) -> SplitEvaluator:
    return SplitEvaluator(self, par, source, split=split, batch_size=batch_size, max_tokens=max_tokens)

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
    return self.model.init(rng, batch, train=False)["params"]

  def logits(self, params: Any, batch: dict[str, Any], *, train: bool) -> jax.Array:
    return self.model.apply({"params": params}, batch, train=train)

  def loss(
    self, params: Any, batch: dict[str, Any], rng: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng  # The classifier has no stochastic layers yet; the key is here for those that will.
    logits = self.logits(params, batch, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  def eval_sums(self, params: Any, batch: dict[str, Any]) -> dict[str, jax.Array]:
    logits = self.logits(params, batch, train=False)
    weight = batch["weight"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (logits.argmax(-1) == batch["label"]).astype(jnp.float32) * weight
    onehot = jax.nn.one_hot(batch["label"], self.num_classes) * weight[:, None]
    return {
      "loss": (losses * weight).sum(),
      "correct": correct.sum(),
      "count": weight.sum(),
      "class_correct": (onehot * correct[:, None]).sum(0),
      "class_count": onehot.sum(0),
    }

  def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
    class_accuracy = sums["class_correct"] / np.maximum(sums["class_count"], 1)
    return {
      "loss": float(sums["loss"] / sums["count"]),
      "accuracy": float(sums["correct"] / sums["count"]),
      **{
        f"class_accuracy/{name}": float(a) for name, a in zip(self.class_names, class_accuracy, strict=True)
      },
    }
