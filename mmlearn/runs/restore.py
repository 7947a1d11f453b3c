"""A finished run read back for tools that evaluate it (`scripts/retrieve.py`, `scripts/robustness.py`).

The run's own `config.json` rebuilds the dataset, the task and the parameter template, so a tool needs
only `--workdir` and gets exactly the model that was trained.
"""

import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from mmlearn import data, optim, registry
from mmlearn.data import pipeline
from mmlearn.errors import ConfigError, DataError, WorkdirError
from mmlearn.runs import selection
from mmlearn.runs import workdir as workdir_lib
from mmlearn.runs.checkpoint import Checkpointer
from mmlearn.train import state as run_setup


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, with the modules it names in `imports` imported (they register its components)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} is missing; is {workdir} a training run?")
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  registry.import_modules(config.get("imports", ()))
  return config


def reported_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checkpoint directory of the state a run reports: its best-validation one when it selects one."""
  selected = config.get("select_metric") and os.path.isfile(os.path.join(workdir, selection.RECORD))
  return selection.SUBDIR if selected else "checkpoints"


def load_run(
  config: ml_collections.ConfigDict, workdir: str, splits: Sequence[str]
) -> tuple[dict[str, Any], Any, Any, Any]:
  """(sources of `splits` and "train", dataset info, task, the variables of the state the run reports).

  That is the best-validation state when the run selects one (`config.select_metric`), else the latest.

  The variables are what the run evaluates with: its parameters' moving average when it kept one.
  """
  sources, info = data.load_sources(
    config.dataset.name,
    config=config.dataset.config,
    data_dir=config.dataset.data_dir,
    manual_dir=config.dataset.manual_dir,
    options=config.dataset.get("options"),
    splits=("train", *splits),
  )
  task, num_examples = run_setup.build_task(config, sources["train"], info)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise WorkdirError(f"{workdir} holds no checkpoint")
  checkpointer = Checkpointer(
    workdir, keep=config.keep_checkpoints, read_only=True, subdir=reported_checkpoints(config, workdir)
  )
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise WorkdirError(f"{workdir} holds no checkpoint")
    tx = optim.make_optimizer(config.optimizer, run_setup.total_train_steps(config, num_examples))
    template = run_setup.initial_state(config, task, tx, sources["train"], 1)
    state = checkpointer.restore(step, template)  # Parameters only: no training pipeline to build.
  finally:
    checkpointer.close()
  return sources, info, task, state.variables(ema=config.get("ema_decay", 0.0) > 0)


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
    raise DataError(f"the {what} has {len(ids)} words; the model reads 1 to {max_tokens}")
  tokens = np.zeros((1, max_tokens), np.int32)
  tokens[0, : len(ids)] = ids
  return {modality: tokens, f"{modality}_mask": tokens != 0}
