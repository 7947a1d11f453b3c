"""Multimodal classification: encoders per modality -> fusion -> MLP head, softmax cross-entropy.

The task contract every task follows (the trainer relies on nothing else):
  - `init(rng, batch) -> params`
  - `loss(params, batch, rng) -> (scalar loss, metrics dict)`: the per-device mean over its examples.
  - `eval_sums(params, batch) -> dict of per-device sums`, weighted by `batch["weight"]` (0 = padding).
  - `summarize(sums) -> dict of metrics` from sums accumulated over a whole split.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmlearn.models.classifier import build_classifier
from mmlearn.tasks.registry import TASKS


@TASKS.register("classification")
class ClassificationTask:
  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    vocab_size: int | None,
    class_names: list[str] | None = None,
  ):
    self.num_classes = num_classes
    self.class_names = class_names or [str(i) for i in range(num_classes)]
    self.model = build_classifier(config.model, num_classes=num_classes, vocab_size=vocab_size)

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
