"""Multimodal classification: encoders per modality -> fusion -> MLP head, a loss from `class_losses`.

It follows the task contract (`mmlearn.tasks.contract.Task`).

Classification evaluates with `SplitEvaluator`, which sums per-batch statistics:
  - `eval_sums(params, batch) -> dict of per-device sums`, weighted by `batch["weight"]` (0 = padding).
  - `summarize(sums) -> dict of metrics` from sums accumulated over a whole split.
Classification's only sums are the cross-entropy and a weighted confusion matrix [C, C]; every metric
(accuracy, balanced accuracy, macro-F1, per-class recall) comes from the matrix, which is also reported
itself as a `ConfusionMatrix` (the metric writer draws it). The evaluation loss is the plain
cross-entropy whatever the training loss, so runs trained with different losses compare.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmlearn import parallel as parallel_lib
from mmlearn.evaluators.split_pass import SplitEvaluator
from mmlearn.losses import classification as class_losses
from mmlearn.metrics import classification as cm
from mmlearn.models.classifier import build_classifier
from mmlearn.models.config import compute_dtype
from mmlearn.tasks.contract import apply_for_training
from mmlearn.tasks.registry import TASKS


@TASKS.register("classification")
class ClassificationTask:
  """Classes come from the dataset's `label` feature (`info`), or explicitly from `num_classes`.

  `class_counts` ([C], the training split's count of each class, or a function computing it) is needed
  only by losses that weight or shift classes (`config.classification.loss`), which alone call it.
  """

  summary_metric = "accuracy"
  separable_loss = True
  evaluator_types = (
    "classification",
    "robustness",
  )  # Registered evaluators (mmlearn.evaluators.registry) that apply.
  default_evaluators = ("classification",)

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: Any = None,
    vocab_size: int | None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    class_counts: np.ndarray | Callable[[], np.ndarray] | None = None,
  ):
    if num_classes is None:
      if info is None:
        raise ValueError("classification needs the dataset info or num_classes")
      label = info.features["label"]
      num_classes, class_names = label.num_classes, class_names or list(label.names)
    self.num_classes = num_classes
    self.class_names = class_names or [str(i) for i in range(num_classes)]
    self.model = build_classifier(
      config.model,
      num_classes=num_classes,
      vocab_size=vocab_size,
      learned_missing=config.missing.imputation == "learned",
      dtype=compute_dtype(config.get("precision", "float32")),
    )

    def counts() -> np.ndarray:
      resolved = class_counts() if callable(class_counts) else class_counts
      if resolved is not None and np.shape(resolved) != (num_classes,):
        raise ValueError(f"class_counts has shape {np.shape(resolved)}, expected ({num_classes},)")
      return resolved

    self.class_loss = class_losses.build(config.classification, counts)

  def evaluator(self, par: parallel_lib.DataParallel, source: Any, **kwargs: Any) -> SplitEvaluator:
    return SplitEvaluator(self, par, source, **kwargs)

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    return dict(self.model.init(rng, batch, train=False))

  def logits(self, variables: dict[str, Any], batch: dict[str, Any]) -> jax.Array:
    """Evaluation-mode logits (running BatchNorm statistics, no dropout)."""
    return self.model.apply(variables, batch, train=False)

  def loss(
    self,
    variables: dict[str, Any],
    batch: dict[str, Any],
    rng: jax.Array,
    *,
    step: Any = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    del rng, step  # The classifier's randomness is dropout alone; it has no schedules.
    logits, updated = apply_for_training(self.model, variables, batch, dropout_rng=dropout_rng)
    loss = self.class_loss(logits, batch["label"]).mean()
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}, updated

  def eval_sums(self, variables: dict[str, Any], batch: dict[str, Any]) -> dict[str, jax.Array]:
    logits = self.logits(variables, batch)
    weight = batch["weight"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    confusion = jnp.zeros((self.num_classes, self.num_classes), jnp.float32)
    return {
      "loss": (losses * weight).sum(),
      "confusion": confusion.at[batch["label"], logits.argmax(-1)].add(weight),  # Exact, padding adds 0.
    }

  def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
    confusion = np.asarray(sums["confusion"], np.float64)
    recall = cm.recall(confusion)
    return {
      "loss": float(sums["loss"] / confusion.sum()),
      "accuracy": cm.accuracy(confusion),
      "balanced_accuracy": cm.balanced_accuracy(confusion),
      "macro_f1": cm.macro_f1(confusion),
      **{f"class_recall/{name}": float(r) for name, r in zip(self.class_names, recall, strict=True)},
      "confusion_matrix": cm.ConfusionMatrix(confusion, tuple(self.class_names)),
    }
