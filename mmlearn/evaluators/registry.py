"""Evaluators by name, scheduled per run as big_vision's are: `config.evals.<name> = {type, split, ...}`.

Each entry names a registered evaluator `type`, the `split` it reads and `every_steps` (0: only at the
end of training; every evaluator also runs at the end), plus the type's own options:

  config.evals.val = {"type": "classification", "split": "validation", "every_steps": 200}
  config.evals.robust = {"type": "robustness", "split": "test", "noise": False}

Entries are added in a config file; the command line may change their keys
(`--config.evals.val.every_steps=100`). With no entries, every split of `dataset.eval_splits` gets the
task's default evaluators (`Task.default_evaluators`), every `eval_every_steps`. Evaluators are built
once per run, so each compiles its per-device step once and reuses it.

An evaluator type is registered with the capability it needs of the task (`@evaluator(name,
requires=Classifier)`; `mmlearn.tasks.contract`): it applies to the tasks that have it, checked as a
protocol, and a mismatch is a `ConfigError` naming the entry before anything trains. Its builder takes
the task (as that capability), the run's `EvalContext` and the split's source, and hands the evaluator
only the functions it needs (`task.logits`, `task.embed`, `task.sample`). A type that reads other splits
too (the linear probe's training and validation splits) names the options that hold them
(`split_options`): those splits are loaded with the data, and its builder finds them in `context.sources`.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from mmlearn import parallel as parallel_lib
from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.registry import Registry
from mmlearn.tasks.contract import Evaluator, RunLoader, Task

SCHEDULE_KEYS = ("type", "split", "every_steps")


# Texts -> (ids int32 [N, max_tokens], mask bool [N, max_tokens]), as the pipeline tokenizes captions.
Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator may need from the run besides its task and split."""

  par: parallel_lib.DataParallel
  dataset: str  # The dataset's name (coherence reads mmshapes' labels as shape and colour).
  batch_size: int
  max_tokens: int
  load_run: RunLoader  # Reads another trained run back (the coherence evaluator's judge).
  # The run's loaded splits: an evaluator's own and those its `split_options` name (the linear probe's).
  sources: Mapping[str, Source] = dataclasses.field(default_factory=dict)
  # Prompts tokenized with the run's `dataset.tokenizer` and `dataset.max_tokens` (zero-shot's class
  # prompts); None where the dataset has no text.
  tokenize: Tokenize | None = None
  # The class names of the dataset's class-label features (`{"label": ("red_circle", ...)}`).
  label_names: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


# build(task, context, source, *, split, **options) -> Evaluator; `task` has the type's capability.
Builder = Callable[..., Evaluator]


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  requires: type  # The capability protocol a task needs (`mmlearn.tasks.contract`).
  build: Builder
  split_options: tuple[str, ...] = ()  # Options naming other splits it reads (loaded with the data).

  @property
  def options(self) -> list[str]:
    """The type's own options: its builder's keyword arguments besides the split."""
    accepted = list(inspect.signature(self.build).parameters)[3:]
    return sorted(set(accepted) - {"split"})

  def other_splits(self, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The splits its `split_options` name in `options`, else by their defaults."""
    defaults = inspect.signature(self.build).parameters
    return tuple(str(options.get(name, defaults[name].default)) for name in self.split_options)


EVALUATORS: Registry[EvaluatorType] = Registry("evaluator")


def evaluator(
  name: str, *, requires: type, split_options: tuple[str, ...] = ()
) -> Callable[[Builder], Builder]:
  """Registers `build` as evaluator type `name`, for the tasks that have the capability `requires`;
  `split_options` are its options that name other splits it reads (a probe's training split)."""

  def decorator(build: Builder) -> Builder:
    EVALUATORS.add(name, EvaluatorType(requires, build, split_options))
    return build

  return decorator


def applicable(task: Task) -> list[str]:
  """The evaluator types whose capability the task has."""
  return [name for name in EVALUATORS.names() if isinstance(task, EVALUATORS.get(name).requires)]


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  name: str
  type: str
  split: str
  every_steps: int
  options: Mapping[str, Any]

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0


def specs(config: ml_collections.ConfigDict, task: Task) -> list[EvalSpec]:
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
    evaluator_type = EVALUATORS.get(kind)
    if not isinstance(task, evaluator_type.requires):
      raise ConfigError(
        f"{where}: evaluator {kind!r} does not apply to this task (it needs a "
        f"{evaluator_type.requires.__name__}); this task has {', '.join(applicable(task))}"
      )
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
      raise ConfigError(f"{where}.every_steps must be an integer >= 0, got {every!r}")
    options = {k: v for k, v in entry.items() if k not in SCHEDULE_KEYS}
    unknown = sorted(set(options) - set(evaluator_type.options))
    if unknown:
      raise ConfigError(f"{where}: unknown option(s) {unknown} for {kind!r}; known: {evaluator_type.options}")
    out.append(EvalSpec(name, kind, entry["split"], every, options))
  return out


def configured_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits the run's evaluators read, known from the config alone (to load them with the data):
  each entry's own and those its type's `split_options` name."""
  if not config.evals:
    return tuple(config.dataset.eval_splits)
  out = []
  for entry in config.evals.values():
    entry = dict(entry)
    if "split" in entry:
      out.append(entry["split"])
    kind = entry.get("type")
    if isinstance(kind, str) and kind in EVALUATORS:  # An unknown type is `specs`' error, with its entry.
      out.extend(EVALUATORS.get(kind).other_splits(entry))
  return tuple(dict.fromkeys(out))


def splits(eval_specs: Sequence[EvalSpec]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(spec.split for spec in eval_specs))


def build(spec: EvalSpec, task: Task, context: EvalContext, source: Source) -> Evaluator:
  return EVALUATORS.get(spec.type).build(task, context, source, split=spec.split, **spec.options)
