"""Evaluators by name, scheduled per run as big_vision's are: `config.evals.<name> = {type, split, ...}`.

Each entry names a registered evaluator `type`, the `split` it reads and `every_steps` (0: only at the
end of training; every evaluator also runs at the end), plus the type's own options:

  config.evals.val = {"type": "classification", "split": "validation", "every_steps": 200}
  config.evals.robust = {"type": "robustness", "split": "test", "noise": False}

With no entries, every split of `dataset.eval_splits` gets the task's default evaluators
(`task.default_evaluators`), every `eval_every_steps`. Evaluators are built once per run, so each
compiles its per-device step once and reuses it. All of them follow `mmlearn.tasks.contract.Evaluator`:
`run(variables)` yields `(name, value)` pairs, names prefixed with the split.

A type applies to the tasks that provide what it calls (`classification` needs `eval_sums`/`summarize`
and class logits, `elbo`, `flow_loss` and `samples` a generator's `sample`); a mismatch is a
`ConfigError` naming the entry before anything trains.
"""

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from mmlearn.errors import ConfigError
from mmlearn.evaluators import robustness
from mmlearn.evaluators.split_pass import SplitEvaluator
from mmlearn.registry import Registry

EVALUATORS = Registry("evaluator")
SCHEDULE_KEYS = ("type", "split", "every_steps")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  name: str
  type: str
  split: str
  every_steps: int
  options: Mapping[str, Any]

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What an evaluator may need from the run besides its split: passed whole so factories stay small."""

  task: Any
  par: Any
  dataset: str
  batch_size: int
  max_tokens: int
  absent: Any  # The run's `missing.MissingModalities` (its evaluation transform and imputation).
  seed: int


def specs(config: ml_collections.ConfigDict, task: Any) -> list[EvalSpec]:
  """The run's evaluators, checked: known types that apply to the task, known options, splits named."""
  if not config.evals:
    return [
      EvalSpec(f"{split}/{kind}", kind, split, config.eval_every_steps, {})
      for split in config.dataset.eval_splits
      for kind in task.default_evaluators
    ]
  out = []
  for name, entry in config.evals.items():
    entry = dict(entry)
    where = f"config.evals.{name}"
    if "type" not in entry or "split" not in entry:
      raise ConfigError(f"{where} needs a 'type' (known: {', '.join(EVALUATORS.names())}) and a 'split'")
    kind, every = entry["type"], entry.get("every_steps", 0)
    factory = EVALUATORS.get(kind)
    if kind not in task.evaluator_types:
      raise ConfigError(
        f"{where}: evaluator {kind!r} does not apply to this task; it has {', '.join(task.evaluator_types)}"
      )
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
      raise ConfigError(f"{where}.every_steps must be an integer >= 0, got {every!r}")
    options = {k: v for k, v in entry.items() if k not in SCHEDULE_KEYS}
    accepted = set(inspect.signature(factory).parameters) - {"context", "source", "split"}
    unknown = sorted(set(options) - accepted)
    if unknown:
      raise ConfigError(f"{where}: unknown option(s) {unknown} for {kind!r}; known: {sorted(accepted)}")
    out.append(EvalSpec(name, kind, entry["split"], every, options))
  return out


def configured_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits the run's evaluators read, known from the config alone (to load them with the data)."""
  if config.evals:
    return tuple(dict.fromkeys(entry["split"] for entry in config.evals.values() if "split" in entry))
  return tuple(config.dataset.eval_splits)


def splits(eval_specs: Sequence[EvalSpec]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(spec.split for spec in eval_specs))


def build(spec: EvalSpec, context: RunContext, source: Any) -> Any:
  return EVALUATORS.get(spec.type)(context, source, split=spec.split, **spec.options)


def _split_kwargs(context: RunContext, split: str, transform: Any = None) -> dict[str, Any]:
  return {
    "split": split,
    "batch_size": context.batch_size,
    "max_tokens": context.max_tokens,
    "transform": transform,
  }


@EVALUATORS.register("classification")
def _classification(context: RunContext, source: Any, *, split: str) -> SplitEvaluator:
  """Loss, accuracy, balanced accuracy, macro-F1, per-class recall and the confusion matrix."""
  return SplitEvaluator(
    context.task, context.par, source, **_split_kwargs(context, split, context.absent.evaluate())
  )


@EVALUATORS.register("retrieval")
def _retrieval(context: RunContext, source: Any, *, split: str) -> Any:
  """Recall@K, median rank and mAP both ways (`mmlearn.tasks.retrieval`)."""
  return context.task.evaluator(context.par, source, **_split_kwargs(context, split))


@EVALUATORS.register("elbo")
def _elbo(context: RunContext, source: Any, *, split: str) -> Any:
  """The MVAE's ELBO and its parts at beta = 1 over the split."""
  from mmlearn.evaluators.generation import GenerationEvaluator  # noqa: PLC0415 (the MVAE's module, on demand)

  return GenerationEvaluator(context.task, context.par, source, grids=False, **_split_kwargs(context, split))


@EVALUATORS.register("flow_loss")
def _flow_loss(context: RunContext, source: Any, *, split: str) -> Any:
  """The flow model's velocity loss over the split, every condition kept, fixed keys."""
  from mmlearn.evaluators.generation import GenerationEvaluator  # noqa: PLC0415

  return GenerationEvaluator(context.task, context.par, source, grids=False, **_split_kwargs(context, split))


@EVALUATORS.register("samples")
def _samples(context: RunContext, source: Any, *, split: str) -> Any:
  """Sample grids of every array modality given each other one (images in TensorBoard)."""
  from mmlearn.evaluators.generation import SampleGridEvaluator  # noqa: PLC0415

  return SampleGridEvaluator(context.task, context.par, source, **_split_kwargs(context, split))


@EVALUATORS.register("coherence")
def _coherence(
  context: RunContext,
  source: Any,
  *,
  split: str,
  judge_workdir: str = "",
  temperature: float = 1.0,
  frechet: bool = True,
  guidance_scale: float | None = None,
  num_steps: int = 0,
  sampler: str | None = None,
) -> Any:
  """What a trained judge classifier reads in images generated from each other modality; with `frechet`,
  the Fréchet distance and within-class diversity of those images in the judge's feature space.
  `guidance_scale`, `num_steps` and `sampler` (flow runs) override the run's sampling settings."""
  from mmlearn.evaluators.coherence import CoherenceEvaluator  # noqa: PLC0415 (loads a run: on demand)

  if not judge_workdir:
    raise ConfigError("the coherence evaluator needs judge_workdir (an image-only classification run)")
  return CoherenceEvaluator(
    context.task,
    source,
    split=split,
    judge_workdir=judge_workdir,
    dataset=context.dataset,
    temperature=temperature,
    batch_size=context.batch_size,
    max_tokens=context.max_tokens,
    seed=context.seed,
    frechet=frechet,
    sample_options=sample_options(guidance_scale=guidance_scale, num_steps=num_steps, sampler=sampler),
  )


def sample_options(
  *, guidance_scale: float | None = None, num_steps: int = 0, sampler: str | None = None
) -> dict[str, Any]:
  """The sampling overrides that are set (None / 0: the run's own)."""
  options = {"guidance_scale": guidance_scale, "num_steps": num_steps or None, "sampler": sampler}
  return {k: v for k, v in options.items() if v is not None}


class RobustnessEvaluator:
  """Accuracy against test-time missing rate and input noise (`mmlearn.evaluators.robustness`): curves and areas.

  One classification evaluator (one compiled step) serves every point; only its transform changes.
  """

  def __init__(self, context: RunContext, source: Any, *, split: str, noise: bool, num_examples: int):
    self.split, self.noise, self.absent, self.seed = split, noise, context.absent, context.seed
    source = robustness.subsample(source, num_examples, seed=context.seed)
    self.evaluator = SplitEvaluator(context.task, context.par, source, **_split_kwargs(context, split))

  def curves(self, variables: dict[str, Any]) -> list[robustness.Curve]:
    def accuracy(transform: Callable | None) -> float:
      self.evaluator.transform = transform
      value = dict(self.evaluator.run(variables))[f"{self.split}/accuracy"]
      logging.info("%s accuracy %.4f", self.split, value)
      return value

    return list(robustness.curves(accuracy, self.absent, noise=self.noise, seed=self.seed))

  def run(self, variables: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for curve in self.curves(variables):
      yield f"{self.split}/robustness/{curve.name}/area", curve.area
      for level, value in zip(curve.levels, curve.values, strict=True):
        yield f"{self.split}/robustness/{curve.name}/{level:g}", value


@EVALUATORS.register("robustness")
def _robustness(
  context: RunContext, source: Any, *, split: str, noise: bool = True, num_examples: int = 0
) -> RobustnessEvaluator:
  """Robustness curves of a classifier; `num_examples` > 0 evaluates a seeded subset (10-30 passes)."""
  return RobustnessEvaluator(context, source, split=split, noise=noise, num_examples=num_examples)
