"""Metrics of generated images read by a judge classifier: coherence, and FID-style distribution metrics.

Coherence, as the MMVAE papers report it: a judge is a separately trained classifier (a run of the
project's classification task). A generated image is coherent when the judge's label for it is the
label of the example it was conditioned on, so coherence is the judge's accuracy on generated images,
and is only as good as the judge: report the judge's accuracy on real images beside it. mmshapes' label
is `shape * 4 + colour`, so label agreement is shape + colour coherence; `ATTRIBUTES` also splits it
into shape and colour agreement (`agreement`).

The Fréchet distance between two sets of features fits a Gaussian to each and measures
|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017, with the judge's penultimate
layer in place of Inception's). It is biased upwards at small sample sizes, so it is only compared at
equal sizes: the generators' value against the distance between two disjoint halves of the real split
(`halves`), the floor a perfect generator would reach.

Diversity is the mean pairwise feature distance within each class, generated against real: a generator
that draws one image per class (mode collapse, or strong guidance) scores near 0 however coherent it is.
"""

import warnings
from collections.abc import Callable

import numpy as np
from scipy import linalg

from mmlearn.data import mmshapes

# Dataset -> attribute -> label -> that attribute's value; every dataset also has "label" itself.
ATTRIBUTES: dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]] = {
  "mmshapes": {
    "shape": lambda label: label // len(mmshapes.COLOURS),
    "colour": lambda label: label % len(mmshapes.COLOURS),
  },
}


def agreement(predicted: np.ndarray, target: np.ndarray, dataset: str) -> dict[str, float]:
  """`{"label": ..., <attribute>: ...}`: the fraction of predictions agreeing with the targets on each."""
  predicted, target = np.asarray(predicted), np.asarray(target)
  out = {"label": float(np.mean(predicted == target))}
  for name, value in ATTRIBUTES.get(dataset, {}).items():
    out[name] = float(np.mean(value(predicted) == value(target)))
  return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """The Fréchet distance between Gaussians fitted to features a [N, D] and b [M, D] (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f"Fréchet distance of features {a.shape} and {b.shape}")
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  with warnings.catch_warnings():
    # ReLU features often have dead units, so the product is singular; its root is still checked here.
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # Regularise, as the reference FID code does.
      eps = 1e-6 * np.eye(len(cov_a))
      root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
  root = np.real(root)
  value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
  return float(max(value, 0.0))


def halves(count: int) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint halves of range(count): even and odd positions (equal sizes, a fixed choice)."""
  index = np.arange(count - count % 2)
  return index[0::2], index[1::2]


def class_diversity(features: np.ndarray, labels: np.ndarray) -> float:
  """Mean over classes (with >= 2 members) of the mean pairwise Euclidean distance of their features."""
  features, labels = np.asarray(features, np.float64), np.asarray(labels)
  values = []
  for label in np.unique(labels):
    members = features[labels == label]
    n = len(members)
    if n < 2:
      continue
    squared = np.sum(members**2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * members @ members.T, 0.0))
    values.append(distances.sum() / (n * (n - 1)))
  return float(np.mean(values)) if values else float("nan")
