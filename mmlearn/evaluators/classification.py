"""The `classification` evaluator: loss, accuracy, balanced accuracy, macro-F1, per-class recall, confusion.

It reads the task's logits only. Per batch and device it sums the cross-entropy and a weighted confusion
matrix [C, C] (padding weighs 0), summed over devices; every metric comes from the matrix
(`mmlearn.metrics.classification`), which is also reported itself (the metric writer draws it). The
evaluation loss is the plain cross-entropy whatever the training loss, so runs trained with different
losses compare. Evaluation batches miss modalities at the run's test rates (`Classifier.missing`).
"""

from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.data.pipeline import EvalTransform, Source
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.evaluators.split_pass import SplitPass
from mmlearn.metrics import classification as metrics
from mmlearn.tasks.contract import Batch, Classifier, Metric, Variables

LogitsFn = Callable[[Variables, Batch], jax.Array]


def eval_sums(logits: jax.Array, batch: Batch, num_classes: int) -> dict[str, jax.Array]:
  """The weighted cross-entropy sum and confusion matrix of one batch (padding has weight 0)."""
  weight = jnp.asarray(batch["weight"], jnp.float32)
  labels = jnp.asarray(batch["label"])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32)
  return {
    "loss": (losses * weight).sum(),
    "confusion": confusion.at[labels, logits.argmax(-1)].add(weight),  # Exact, padding adds 0.
  }


def summarize(sums: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Metric]:
  """Every metric from a split's summed cross-entropy and confusion matrix."""
  confusion = np.asarray(sums["confusion"], np.float64)
  recall = metrics.recall(confusion)
  return {
    "loss": float(sums["loss"] / confusion.sum()),
    "accuracy": metrics.accuracy(confusion),
    "balanced_accuracy": metrics.balanced_accuracy(confusion),
    "macro_f1": metrics.macro_f1(confusion),
    **{f"class_recall/{name}": float(r) for name, r in zip(class_names, recall, strict=True)},
    "confusion_matrix": metrics.ConfusionMatrix(confusion, tuple(class_names)),
  }


class ClassificationEvaluator:
  """Evaluates logits on a whole split, every example exactly once; `transform` changes its batches."""

  def __init__(
    self,
    logits: LogitsFn,
    class_names: Sequence[str],
    par: parallel_lib.DataParallel,
    source: Source,
    *,
    split: str,
    batch_size: int,
    max_tokens: int,
    transform: EvalTransform | None = None,
  ):
    self.class_names, self.split = tuple(class_names), split

    def per_device(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      sums = eval_sums(logits(variables, batch), batch, len(self.class_names))
      return lax.psum(sums, parallel_lib.AXIS)

    self.split_pass = SplitPass(
      per_device, par, source, split=split, batch_size=batch_size, max_tokens=max_tokens, transform=transform
    )

  @property
  def transform(self) -> EvalTransform | None:
    return self.split_pass.transform

  @transform.setter
  def transform(self, transform: EvalTransform | None) -> None:
    """Another change to the split's batches, the compiled step kept (robustness curves)."""
    self.split_pass.transform = transform

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    totals = None
    for batch in self.split_pass.batches():
      sums = self.split_pass.step(variables, batch)
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    for name, value in summarize(jax.device_get(totals), self.class_names).items():
      yield f"{self.split}/{name}", value


def for_task(
  task: Classifier, context: EvalContext, source: Source, split: str, transform: EvalTransform | None
) -> ClassificationEvaluator:
  """The evaluator of `task`'s logits on `source` (also the robustness evaluator's)."""
  return ClassificationEvaluator(
    task.logits,
    task.class_names,
    context.par,
    source,
    split=split,
    batch_size=context.batch_size,
    max_tokens=context.max_tokens,
    transform=transform,
  )


@evaluator("classification", requires=Classifier)
def build(task: Classifier, context: EvalContext, source: Source, *, split: str) -> ClassificationEvaluator:
  """Loss, accuracy, balanced accuracy, macro-F1, per-class recall and the confusion matrix."""
  return for_task(task, context, source, split, task.missing.evaluate())
