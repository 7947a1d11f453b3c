"""Coherence of conditional generation, as the MMVAE papers report it: what a judge reads in the samples.

A judge is a separately trained classifier (a run of the project's classification task). A generated
image is coherent when the judge's label for it is the label of the example it was conditioned on, so
coherence is the judge's accuracy on generated images, and is only as good as the judge: report the
judge's accuracy on real images beside it.

mmshapes' label is `shape * 4 + colour`, so label agreement is shape + colour coherence; `ATTRIBUTES`
also splits it into shape and colour agreement.
"""

from collections.abc import Callable

import numpy as np

from mmlearn.data import mmshapes

# Dataset -> attribute -> label -> that attribute's value; every dataset also has "label" itself.
ATTRIBUTES: dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]] = {
  "mmshapes": {
    "shape": lambda label: label // len(mmshapes.COLOURS),
    "colour": lambda label: label % len(mmshapes.COLOURS),
  },
}


def judge_labels(images: np.ndarray, judge_fn: Callable, *, batch_size: int = 512) -> np.ndarray:
  """The judge's label for each image [N]; `judge_fn(images) -> logits [n, C]` (or labels [n])."""
  labels = []
  for start in range(0, len(images), batch_size):
    out = np.asarray(judge_fn(images[start : start + batch_size]))
    labels.append(out.argmax(-1) if out.ndim == 2 else out)
  return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)


def coherence(generated_images: np.ndarray, target_labels: np.ndarray, judge_fn: Callable, **kwargs) -> float:
  """The fraction of `generated_images` [N, ...] the judge labels as `target_labels` [N]."""
  target_labels = np.asarray(target_labels)
  if len(generated_images) != len(target_labels) or not len(target_labels):
    raise ValueError(f"coherence of {len(generated_images)} images against {len(target_labels)} labels")
  return float(np.mean(judge_labels(generated_images, judge_fn, **kwargs) == target_labels))


def agreement(predicted: np.ndarray, target: np.ndarray, dataset: str) -> dict[str, float]:
  """`{"label": ..., <attribute>: ...}`: the fraction of predictions agreeing with the targets on each."""
  predicted, target = np.asarray(predicted), np.asarray(target)
  out = {"label": float(np.mean(predicted == target))}
  for name, value in ATTRIBUTES.get(dataset, {}).items():
    out[name] = float(np.mean(value(predicted) == value(target)))
  return out
