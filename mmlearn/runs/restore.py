"""A trained run read back from its workdir, for tools (`scripts/retrieve.py`, `robustness.py`,
`generate.py`) and for runs that use another run (`init_from`, generative imputation, a judge).

The run's own `config.json` rebuilds the dataset, the task and the parameter template, so a tool needs
only `--workdir` and gets exactly the model that was trained. A config written by an earlier version is
read in today's layout (`mmlearn.config.migrate`), never misread.
"""

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmlearn import data, registry, tasks
from mmlearn.config import migrate
from mmlearn.data import pipeline
from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError, DataError, WorkdirError
from mmlearn.runs import selection
from mmlearn.runs import workdir as workdir_lib
from mmlearn.runs.checkpoint import Checkpointer
from mmlearn.tasks.contract import LoadedRun, Task, Variables
from mmlearn.train import lora
from mmlearn.train import state as train_state


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config in today's layout, with the modules it names in `imports` imported (they register
  its components)."""
  saved = workdir_lib.read_config(workdir)
  if saved is None:
    raise WorkdirError(
      f"{os.path.join(workdir, workdir_lib.CONFIG)} is missing; is {workdir} a training run?"
    )
  config = ml_collections.ConfigDict(migrate.upgrade(saved, where=os.path.join(workdir, workdir_lib.CONFIG)))
  registry.import_modules(config.imports)
  return config


def load_sources(
  config: ml_collections.ConfigDict, splits: Sequence[str]
) -> tuple[dict[str, Source], tfds.core.DatasetInfo]:
  """The splits of the run's dataset (prepared on first use), as `config.dataset` names them."""
  return data.load_sources(
    config.dataset.name,
    config=config.dataset.config,
    data_dir=config.dataset.data_dir,
    manual_dir=config.dataset.manual_dir,
    options=config.dataset.options,
    splits=splits,
    reading=data.Reading.from_config(config.dataset),
  )


def reported_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checkpoint directory of the state a run reports: its best-validation one when it selects one."""
  selected = config.select_metric and os.path.isfile(os.path.join(workdir, selection.RECORD))
  return selection.SUBDIR if selected else "checkpoints"


def load_run(
  config: ml_collections.ConfigDict, workdir: str, splits: Sequence[str]
) -> tuple[dict[str, Source], tfds.core.DatasetInfo, Task, Variables]:
  """(sources of `splits` and "train", dataset info, task, the variables of the state the run reports).

  That is the best-validation state when the run selects one (`config.select_metric`), else the latest.
  The variables are what the run evaluates with: its parameters' moving average when it kept one.
  """
  sources, info = load_sources(config, ("train", *splits))
  task = tasks.build(config, info=info, train_source=sources["train"], load_run=load_run_variables)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise WorkdirError(f"{workdir} holds no checkpoint")
  checkpointer = Checkpointer(
    workdir, keep=config.keep_checkpoints, read_only=True, subdir=reported_checkpoints(config, workdir)
  )
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise WorkdirError(f"{workdir} holds no checkpoint")
    # The template's optimizer state has the same structure whatever the schedule's length: an epoch of
    # the whole split stands for the run's own (a long-tailed subset's would be shorter).
    num_steps = train_state.total_train_steps(config, len(sources["train"]))
    tx, _ = train_state.make_optimizer(config, task, sources["train"], num_steps)
    template = train_state.initial_state(config, task, tx, sources["train"], 1)
    state = checkpointer.restore(step, template)  # Parameters only: no training pipeline to build.
  finally:
    checkpointer.close()
  # A LoRA run's adapters come back merged into the base model: tools and exporters see a plain model.
  variables = lora.merged_variables(state.variables(ema=config.ema_decay > 0))
  return sources, info, task, variables


def load_run_variables(workdir: str) -> LoadedRun:
  """(config, task, variables) of the run in `workdir`: the `RunLoader` handed to tasks and evaluators."""
  config = read_config(workdir)
  _, _, task, variables = load_run(config, workdir, ())
  return LoadedRun(config, task, variables)


def require_task(config: ml_collections.ConfigDict, task: str, workdir: str, purpose: str) -> None:
  """A one-line ConfigError when `workdir` is a run of another task than the tool needs."""
  if config.task != task:
    raise ConfigError(f"{workdir} is a {config.task!r} run; {purpose} needs a {task!r} run")


def text_batch(config: ml_collections.ConfigDict, text: str, *, what: str) -> dict[str, np.ndarray]:
  """`text` as a one-example batch of the run's text modality; unknown words and over-long `what`s
  (a query, a caption) are DataErrors, raised before anything is loaded, so a typo costs no time."""
  modality = pipeline.TOKEN_FEATURES["tokens"]
  if modality not in config.model.modalities:
    modalities = ", ".join(sorted(config.model.modalities))
    raise DataError(f"the run's modalities are {modalities}: there is no text modality for the {what}")
  tokenizer = data.dataset_tokenizer(config.dataset)
  if tokenizer is None:
    raise DataError(f"dataset {config.dataset.name!r} has no tokenizer: it cannot encode the {what}")
  ids = tokenizer.encode(text)
  max_tokens = config.dataset.max_tokens
  if not 0 < len(ids) <= max_tokens:
    raise DataError(f"the {what} has {len(ids)} tokens; the model reads 1 to {max_tokens}")
  tokens = np.zeros((1, max_tokens), np.int32)
  tokens[0, : len(ids)] = ids
  return {modality: tokens, f"{modality}_mask": np.arange(max_tokens)[None, :] < len(ids)}
