"""A finished run read back for tools that evaluate it (`scripts/retrieve.py`, `scripts/robustness.py`).

The run's own `config.json` rebuilds the dataset, the task and the parameter template, so a tool needs
only `--workdir` and gets exactly the model that was trained.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmlearn import data, optim, train
from mmlearn.checkpoint import Checkpointer


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; is {workdir} a training run?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(
  config: ml_collections.ConfigDict, workdir: str, splits: Sequence[str]
) -> tuple[dict[str, Any], Any, Any, Any]:
  """(sources of `splits` and "train", dataset info, task, the latest checkpoint's parameters)."""
  sources, info = data.load_sources(
    config.dataset.name,
    config=config.dataset.config,
    data_dir=config.dataset.data_dir,
    manual_dir=config.dataset.manual_dir,
    splits=("train", *splits),
  )
  task, class_counts = train.build_task(config, sources["train"], info)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint")
    tx = optim.make_optimizer(config.optimizer, train.total_train_steps(config, int(class_counts.sum())))
    template = train.initial_state(config, task, tx, sources["train"], 1)
    state = checkpointer.restore(step, template)  # Parameters only: no training pipeline to build.
  finally:
    checkpointer.close()
  return sources, info, task, state.params
