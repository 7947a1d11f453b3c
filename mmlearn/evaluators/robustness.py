"""Robustness curves of a trained classifier: accuracy against test-time missing rate and input noise.

For each modality alone and for all of them together, the test-time missing rate goes 0, 0.1, ..., 0.9
(the run's own imputation fills what is missing; `mmlearn.data.missing`); for each array modality,
additive Gaussian noise of standard deviation 0, 0.1, ..., 0.9 in the pipeline's [-1, 1] units is added
(and clipped back to [-1, 1]), as MultiBench's robustness benchmarks do. Each curve is summarised by its
area: the trapezoidal area under accuracy-vs-level divided by the levels' span, i.e. the curve's mean
accuracy (MultiBench's relative robustness, on a scale comparable with accuracy itself).

Every point evaluates the whole split with the same masks and noise at every run (seeded per example by
its index), so two runs' curves differ by their models only.
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mmlearn.data import imbalance, missing, pipeline
from mmlearn.errors import ConfigError

LEVELS = tuple(round(0.1 * i, 1) for i in range(10))
_NOISE_STREAM = 0x6E6F
SUBSET_STREAM = 0x7375


@dataclasses.dataclass(frozen=True)
class Curve:
  kind: str  # "missing" | "noise"
  target: str  # A modality name, or "all" (every modality missing at the same rate).
  levels: tuple[float, ...]
  values: tuple[float, ...]

  @property
  def name(self) -> str:
    return f"{self.kind}/{self.target}"

  @property
  def area(self) -> float:
    return area(self.levels, self.values)


def area(levels: Sequence[float], values: Sequence[float]) -> float:
  """Trapezoidal area under `values` over `levels`, divided by the span: the curve's mean value."""
  levels, values = np.asarray(levels, float), np.asarray(values, float)
  if len(levels) < 2:
    return float(values[0])
  return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(levels)) / (levels[-1] - levels[0]))


def subsample(source: Any, num_examples: int, seed: int) -> Any:
  """A seeded random `num_examples` of `source` in their split order (all of it for 0 or more than it has).

  A robustness curve evaluates the split 10 times (30 for the missing-rate curves of two modalities), so
  a subset makes a comparison of several runs affordable; the same seed gives every run the same examples.
  """
  if num_examples < 0:
    raise ConfigError(f"num_examples must be >= 0, got {num_examples}")
  if not num_examples or num_examples >= len(source):
    return source
  indices = np.sort(np.random.default_rng([seed, SUBSET_STREAM]).permutation(len(source))[:num_examples])
  return imbalance.Subset(source, indices)


def noise_transform(modality: str, std: float, seed: int) -> Callable:
  """`eval_batches`' transform adding N(0, std^2) to `modality` (clipped to [-1, 1]), seeded per example."""

  def transform(batch: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = dict(batch)
    shape = batch[modality].shape[1:]
    noise = np.stack(
      [
        np.random.default_rng([seed, int(i), _NOISE_STREAM]).standard_normal(shape, np.float32)
        for i in indices
      ]
    )
    batch[modality] = np.clip(batch[modality] + std * noise, -1.0, 1.0)
    return batch

  return transform


def chain(*transforms: Callable | None) -> Callable | None:
  """One `eval_batches` transform applying the given ones (None entries skipped) in order."""
  transforms = tuple(t for t in transforms if t is not None)
  if not transforms:
    return None

  def transform(batch: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    for t in transforms:
      batch = t(batch, indices)
    return batch

  return transform


def curves(
  accuracy: Callable[[Callable | None], float],
  absent: missing.MissingModalities,
  *,
  levels: Sequence[float] = LEVELS,
  noise: bool = True,
  seed: int = 0,
) -> Iterator[Curve]:
  """Every curve, as `accuracy(transform)` (one whole-split evaluation per point) measures them.

  Missing curves use the run's imputation; noise curves have every modality present. The clean point
  (level 0) is evaluated once and shared by all curves.
  """
  clean = accuracy(None)
  targets = [*absent.modalities, "all"] if len(absent.modalities) > 1 else list(absent.modalities)
  for target in targets:
    chosen = absent.modalities if target == "all" else (target,)
    values = [
      clean if rate == 0 else accuracy(absent.evaluate(dict.fromkeys(chosen, rate))) for rate in levels
    ]
    yield Curve("missing", target, tuple(levels), tuple(values))
  if noise:
    for modality in absent.modalities:
      if modality in pipeline.ARRAY_FEATURES:
        values = [clean if std == 0 else accuracy(noise_transform(modality, std, seed)) for std in levels]
        yield Curve("noise", modality, tuple(levels), tuple(values))


def rows(curves: Sequence[Curve]) -> list[dict[str, Any]]:
  """One CSV row per curve: its name, area, then its value at each level."""
  return [
    {
      "curve": c.name,
      "area": round(c.area, 4),
      **{f"{level:g}": round(v, 4) for level, v in zip(c.levels, c.values, strict=True)},
    }
    for c in curves
  ]
