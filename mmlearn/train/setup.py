"""Everything a run is built from, before its workdir is touched: data, task, optimizer, state, evaluators.

`build(config)` turns a checked config into the parts the loop runs (`Run`). It does every step that can
refuse the config (a dataset that does not prepare, a task's settings, an evaluator that does not apply,
an `init_from` path that is missing, a frozen pattern that matches nothing), so a refused run fails
before it writes anything into its workdir. The task's data hook (`Task.training_data`) says which
training examples an epoch walks and how batches change; the loop never learns what the task is.
"""

import dataclasses
from collections.abc import Callable

import grain
import jax
import ml_collections
import optax
from absl import logging

from mmlearn import data, parallel, tasks
from mmlearn.data import pipeline
from mmlearn.data.augment import Augment
from mmlearn.data.pipeline import Source
from mmlearn.evaluators import registry as evaluators
from mmlearn.pretrained import loading
from mmlearn.runs import init_from, restore, selection
from mmlearn.tasks.contract import Evaluator, Metric, Task, Variables
from mmlearn.train import lora
from mmlearn.train import state as train_state
from mmlearn.train.step import microbatch_chunks


@dataclasses.dataclass
class Run:
  """The parts of a run: its devices, data, task, optimizer, step-0 state and evaluators."""

  par: parallel.DataParallel
  sources: dict[str, Source]
  task: Task
  tx: optax.GradientTransformation
  num_steps: int
  train_iter: grain.DatasetIterator
  state: train_state.TrainState  # Placed on the devices; a resumed run replaces it with its checkpoint.
  evaluators: list[tuple[evaluators.EvalSpec, Evaluator]]
  num_parameters: int
  towers: list[loading.Tower] = dataclasses.field(default_factory=list)  # Pretrained ones, by path.
  # What evaluators get from the state's variables: LoRA's merged parameters (`lora.evaluation_merger`).
  eval_variables: Callable[[Variables], Variables] = lambda variables: variables

  @property
  def splits(self) -> tuple[str, ...]:
    return evaluators.splits([spec for spec, _ in self.evaluators])

  def any_due(self, step: int) -> bool:
    return any(spec.due(step) for spec, _ in self.evaluators)

  def evaluate(self, variables: Variables, *, due_at: int | None = None) -> dict[str, Metric]:
    """Every evaluator's `(name, value)` pairs in one dict (with `due_at`, only those due at that step)."""
    results: dict[str, Metric] = {}
    if any(due_at is None or spec.due(due_at) for spec, _ in self.evaluators):
      variables = self.eval_variables(variables)
    for spec, evaluator in self.evaluators:
      if due_at is None or spec.due(due_at):
        results.update(evaluator.run(variables))
    return results


def build(config: ml_collections.ConfigDict) -> Run:
  """The run's parts, each built from `config` (checked by `mmlearn.config.checks`)."""
  par = parallel.DataParallel(config.parallel.mode, shard_min_size=config.parallel.shard_min_size)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size)
  splits = ("train", *evaluators.configured_splits(config))
  with parallel.process_zero_first("prepare dataset"):  # Processes sharing a data_dir don't race.
    sources, info = restore.load_sources(config, splits)
  task = tasks.build(config, info=info, train_source=sources["train"], load_run=restore.load_run_variables)
  eval_specs = evaluators.specs(config, task)
  selection.check(config.select_metric, evaluators.splits(eval_specs))

  training = task.training_data()
  num_examples = len(training.indices(sources["train"]))
  train_state.check_batch_size(config, num_examples)
  num_steps = train_state.total_train_steps(config, num_examples)
  tx, towers = train_state.make_optimizer(config, task, sources["train"], num_steps, norm=par.global_norm)
  if towers:  # Reads the dataset's tokenizer again only where a text tower may need checking against it.
    loading.check_tokenizer(towers, data.dataset_tokenizer(config.dataset))
  train_iter = pipeline.train_iterator(
    sources["train"],
    batch_size=config.batch_size,
    seed=config.seed,
    max_tokens=config.dataset.max_tokens,
    training=training,
    augment=Augment.from_config(config.augment),
    random_crops=config.augment.image_random_resized_crop,
    workers=config.dataset.workers,
  )
  state = train_state.initial_state(config, task, tx, sources["train"], par.num_devices)
  if any(tower.load for tower in towers):  # Replaced by the checkpoint when the run resumes.
    variables = loading.load(state.variables(), towers)
    state = train_state.TrainState.create(variables, tx, state.rng, ema=state.ema_params is not None)
  if config.init_from.workdir:  # Replaced by the checkpoint when the run resumes.
    variables = init_from.load(config.init_from, lora.base(state.variables()))
    variables = lora.keep_adapters(variables, state.params)
    state = train_state.TrainState.create(variables, tx, state.rng, ema=state.ema_params is not None)
  # Raises now rather than when the first step is traced.
  microbatch_chunks(config.microbatch_size, config.batch_size // par.num_devices, task, state.model_state)
  num_parameters = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("parameters: %s", f"{num_parameters:,}")

  context = evaluators.EvalContext(
    par=par,
    dataset=config.dataset.name,
    batch_size=config.eval_batch_size,
    max_tokens=config.dataset.max_tokens,
    load_run=restore.load_run_variables,
    sources=sources,
    tokenize=data.prompt_tokenizer(config.dataset),
    label_names=data.class_label_names(info),
  )
  built = [(spec, evaluators.build(spec, task, context, sources[spec.split])) for spec in eval_specs]
  return Run(
    par=par,
    sources=sources,
    task=task,
    tx=tx,
    num_steps=num_steps,
    train_iter=train_iter,
    state=par.place_state(state),
    evaluators=built,
    num_parameters=num_parameters,
    towers=towers,
    eval_variables=lora.evaluation_merger(par),
  )
