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
only the functions it needs (`task.logits`, `task.embed`, `task.sample`).
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from mmlearn import parallel as parallel_lib
from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.registry import Registry
from mmlearn.tasks.contract import Evaluator, RunLoader, Task

SCHEDULE_KEYS = ("type", "split", "every_steps")


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator may need from the run besides its task and split."""

  par: parallel_lib.DataParallel
  dataset: str  # The dataset's name (coherence reads mmshapes' labels as shape and colour).
  batch_size: int
  max_tokens: int
  load_run: RunLoader  # Reads another trained run back (the coherence evaluator's judge).


# build(task, context, source, *, split, **options) -> Evaluator; `task` has the type's capability.
Builder = Callable[..., Evaluator]


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  requires: type  # The capability protocol a task needs (`mmlearn.tasks.contract`).
  build: Builder

  @property
  def options(self) -> list[str]:
    """The type's own options: its builder's keyword arguments besides the split."""
    accepted = list(inspect.signature(self.build).parameters)[3:]
    return sorted(set(accepted) - {"split"})


EVALUATORS: Registry[EvaluatorType] = Registry("evaluator")


def evaluator(name: str, *, requires: type) -> Callable[[Builder], Builder]:
  """Registers `build` as evaluator type `name`, for the tasks that have the capability `requires`."""

  def decorator(build: Builder) -> Builder:
    EVALUATORS.add(name, EvaluatorType(requires, build))
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
  """The splits the run's evaluators read, known from the config alone (to load them with the data)."""
  if config.evals:
    return tuple(dict.fromkeys(entry["split"] for entry in config.evals.values() if "split" in entry))
  return tuple(config.dataset.eval_splits)


def splits(eval_specs: Sequence[EvalSpec]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(spec.split for spec in eval_specs))


def build(spec: EvalSpec, task: Task, context: EvalContext, source: Source) -> Evaluator:
  return EVALUATORS.get(spec.type).build(task, context, source, split=spec.split, **spec.options)
