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
from absl import logging

from mmlearn.data import imbalance, missing, pipeline
from mmlearn.data.pipeline import EvalTransform, Source
from mmlearn.errors import ConfigError
from mmlearn.evaluators import classification
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.tasks.contract import Classifier, Metric, Variables

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
  x, y = np.asarray(levels, float), np.asarray(values, float)
  if len(x) < 2:
    return float(y[0])
  return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def subsample(source: Source, num_examples: int, seed: int) -> Source:
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


def noise_transform(modality: str, std: float, seed: int) -> EvalTransform:
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


def curves(
  accuracy: Callable[[EvalTransform | None, str], float],
  absent: missing.MissingModalities,
  *,
  levels: Sequence[float] = LEVELS,
  noise: bool = True,
  seed: int = 0,
) -> Iterator[Curve]:
  """Every curve, as `accuracy(transform, point)` (one whole-split evaluation per point, `point` naming
  it: `missing/audio rate 0.3`) measures them.

  Missing curves use the run's imputation; noise curves have every modality present. The clean point
  (level 0) is evaluated once and shared by all curves.
  """
  clean = accuracy(None, "clean")
  targets = [*absent.modalities, "all"] if len(absent.modalities) > 1 else list(absent.modalities)
  for target in targets:
    chosen = absent.modalities if target == "all" else (target,)
    values = [
      clean
      if rate == 0
      else accuracy(absent.evaluate(dict.fromkeys(chosen, rate)), f"missing/{target} rate {rate:g}")
      for rate in levels
    ]
    yield Curve("missing", target, tuple(levels), tuple(values))
  if noise:
    for modality in absent.modalities:
      if modality in pipeline.ARRAY_FEATURES:
        values = [
          clean
          if std == 0
          else accuracy(noise_transform(modality, std, seed), f"noise/{modality} std {std:g}")
          for std in levels
        ]
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


class RobustnessEvaluator:
  """Accuracy against test-time missing rate and input noise: curves and their areas.

  One classification evaluator (one compiled step) serves every point; only its transform changes.
  """

  def __init__(
    self,
    task: Classifier,
    context: EvalContext,
    source: Source,
    *,
    split: str,
    noise: bool,
    num_examples: int,
    log: Callable[[str], None] = logging.info,
  ):
    self.split, self.noise, self.absent, self.log = split, noise, task.missing, log
    source = subsample(source, num_examples, seed=self.absent.seed)
    self.evaluator = classification.for_task(task, context, source, split, None)

  def curves(self, variables: Variables) -> list[Curve]:
    def accuracy(transform: EvalTransform | None, point: str) -> float:
      self.evaluator.transform = transform
      value = dict(self.evaluator.run(variables))[f"{self.split}/accuracy"]
      self.log(f"{self.split} {point}: accuracy {value:.4f}")
      return float(np.asarray(value))

    return list(curves(accuracy, self.absent, noise=self.noise, seed=self.absent.seed))

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    for curve in self.curves(variables):
      yield f"{self.split}/robustness/{curve.name}/area", curve.area
      for level, value in zip(curve.levels, curve.values, strict=True):
        yield f"{self.split}/robustness/{curve.name}/{level:g}", value


@evaluator("robustness", requires=Classifier)
def build(
  task: Classifier,
  context: EvalContext,
  source: Source,
  *,
  split: str,
  noise: bool = True,
  num_examples: int = 0,
) -> RobustnessEvaluator:
  """Robustness curves of a classifier; `num_examples` > 0 evaluates a seeded subset (10-30 passes)."""
  return RobustnessEvaluator(task, context, source, split=split, noise=noise, num_examples=num_examples)
