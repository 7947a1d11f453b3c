"""Classification metrics from one weighted confusion matrix [C, C] (rows: true class, columns: predicted).

A split's evaluation accumulates only this matrix (summed over batches and devices, padding weighted 0),
so every metric here is a pure numpy function of it and the task computes no metric on device.

A class absent from the split (an all-zero row) has undefined recall (0 / 0): its recall is NaN and it is
left out of balanced accuracy and macro-F1, which average over the classes present. Predictions of an
absent class are not lost: they are misses in the rows of the true classes, so they lower those recalls.
For a present class F1 = 2 TP / (2 TP + FP + FN) is always defined (TP + FN > 0), also when the class is
never predicted (then it is 0).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ConfusionMatrix:
  """A split's confusion counts with the class names for its axes; numpy sees it as the [C, C] counts.

  `np.ndim(value) == 0` is how writers tell scalar metrics from this one (see `MetricWriter`).
  """

  counts: np.ndarray
  class_names: tuple[str, ...]

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self.counts, dtype=dtype)


def accuracy(confusion: np.ndarray) -> float:
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total > 0 else float("nan")


def present(confusion: np.ndarray) -> np.ndarray:
  """[C] bool: the classes with at least one (weighted) example in the split."""
  return confusion.sum(1) > 0


def recall(confusion: np.ndarray) -> np.ndarray:
  """[C] per-class recall TP / (TP + FN); NaN for classes absent from the split."""
  support = confusion.sum(1)
  return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1e-30), np.nan)


def f1(confusion: np.ndarray) -> np.ndarray:
  """[C] per-class F1 = 2 TP / (2 TP + FP + FN); NaN for classes absent from the split."""
  tp = np.diag(confusion)
  denominator = confusion.sum(0) + confusion.sum(1)  # (TP + FP) + (TP + FN)
  return np.where(present(confusion), 2 * tp / np.maximum(denominator, 1e-30), np.nan)


def _mean_over_present(values: np.ndarray, confusion: np.ndarray) -> float:
  mask = present(confusion)
  return float(values[mask].mean()) if mask.any() else float("nan")


def balanced_accuracy(confusion: np.ndarray) -> float:
  """Mean recall over the classes present in the split."""
  return _mean_over_present(recall(confusion), confusion)


def macro_f1(confusion: np.ndarray) -> float:
  """Mean F1 over the classes present in the split."""
  return _mean_over_present(f1(confusion), confusion)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """The fraction of rows of `scores` [N, C] whose true class (`labels` [N]) ranks within the first `k`.

  A tie counts against the true class (its rank is the number of classes scoring at least as high), so
  scores that do not tell the classes apart reach chance at best, never 1.
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  if not len(labels):
    return float("nan")
  true = scores[np.arange(len(labels)), labels]
  rank = (scores >= true[:, None]).sum(axis=1)
  return float((rank <= k).mean())
