"""Config validation before anything runs: unknown keys, wrong types and impossible values.

`config_flags` already rejects unknown keys and ill-typed values given on the command line; these checks
catch the same mistakes made inside config files (which may add keys freely), by comparing the config
against the schema of its task (`mmlearn.config.schema`: the core keys and the task's own sections), and
catch values whose type is right but whose meaning is not. The task checks its own sections
(`TaskFactory.check_config`).
"""

import difflib
import math
from typing import Any

import ml_collections

from mmlearn import optim, parallel, registry
from mmlearn.config import schema
from mmlearn.config.schema import FREE_FORM
from mmlearn.data.augment import Augment
from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS
from mmlearn.runs import init_from
from mmlearn.tasks.registry import TASKS
from mmlearn.train import lora


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """`{dotted key: value}` of a config; a free-form sub-tree (`FREE_FORM`) is one value."""
  if isinstance(tree, ml_collections.ConfigDict | dict) and not prefix.startswith(FREE_FORM):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out
  return {prefix: tree}


def _type_ok(value: Any, reference: Any) -> bool:
  if reference is None or value is None:
    return True
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) == isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, int | float)
  if isinstance(reference, tuple | list):
    return isinstance(value, tuple | list)
  return isinstance(value, type(reference))


def unknown_key(key: str, known: list[str], task: str) -> ConfigError:
  """The one-line error for a key the schema lacks: the closest known key, or the task owning its section."""
  section = key.split(".")[0]
  owners = [name for name in TASKS.names() if section in TASKS.get(name).config_sections()]
  if owners and task not in owners:
    return ConfigError(
      f"unknown config key {key!r}: section {section!r} belongs to task {owners[0]!r}, and config.task "
      f"is {task!r}"
    )
  close = difflib.get_close_matches(key, known, n=1)
  return ConfigError(f"unknown config key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def check_keys_and_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  ref = flatten(reference)
  for key, value in flatten(config).items():
    if key not in ref:
      raise unknown_key(key, list(ref), reference.task)
    if not _type_ok(value, ref[key]):
      raise ConfigError(
        f"config key {key!r} should be {type(ref[key]).__name__}, got {type(value).__name__} {value!r}"
      )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` with a one-line message naming the first problem found.

  Imports `config.imports` first: the task and the names checked below may be registered by those
  modules.
  """
  registry.import_modules(config.get("imports", ()))
  if not isinstance(config.get("task"), str):
    raise ConfigError(f"config.task must name a task (known: {', '.join(TASKS.names())})")
  schema.check_sections(config)
  check_keys_and_types(config, schema.get_config(config.task))
  for key in (
    "batch_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
  ):
    if config[key] <= 0:
      raise ConfigError(f"config key {key!r} must be positive, got {config[key]}")
  learning_rate = config.optimizer.learning_rate
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise ConfigError(f"optimizer.learning_rate must be finite and positive, got {learning_rate}")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs or num_train_steps to a positive value")
  parallel.check_config(config)
  optim.OPTIMIZERS.get(config.optimizer.name)
  if config.init_from.params and not config.init_from.workdir:
    raise ConfigError("init_from.params is set but init_from.workdir names no run to take them from")
  init_from.parse_pairs(config.init_from.params)
  if config.optimizer.frozen:
    optim.frozen_labels(config.optimizer.frozen)  # Raises on a pattern that does not compile.
  lora.check_config(config)
  Augment.from_config(config.augment)  # Raises on negative or out-of-range strengths.
  check_core(config)
  if not config.model.modalities:
    raise ConfigError("config.model.modalities is empty: configure at least one modality")
  for modality, encoder in config.model.modalities.items():
    if "encoder" not in encoder:
      raise ConfigError(f"config.model.modalities.{modality} names no 'encoder'")
    ENCODERS.get(encoder["encoder"])
  TASKS.get(config.task).check_config(config)


PRECISIONS = ("float32", "bfloat16")


def check_core(config: ml_collections.ConfigDict) -> None:
  """Precision, EMA, evaluator entries and the parallel layout."""
  if config.precision not in PRECISIONS:
    raise ConfigError(f"unknown precision {config.precision!r}; known: {', '.join(PRECISIONS)}")
  if not 0 <= config.ema_decay < 1:
    raise ConfigError(f"ema_decay must be in [0, 1) (0: no moving average), got {config.ema_decay}")
  if config.microbatch_size < 0:
    raise ConfigError(
      f"microbatch_size must be >= 0 (0: no gradient accumulation), got {config.microbatch_size}"
    )
  if config.eval_every_steps < 0:
    raise ConfigError(
      f"eval_every_steps must be >= 0 (0: evaluate at the end only), got {config.eval_every_steps}"
    )
  for name, entry in config.evals.items():
    if not isinstance(entry, ml_collections.ConfigDict | dict):
      raise ConfigError(f"config.evals.{name} must be a dict with 'type' and 'split', got {entry!r}")
  if config.select_metric and "/" not in config.select_metric:
    raise ConfigError(
      f"select_metric must name a split's metric, e.g. 'validation/accuracy'; got {config.select_metric!r}"
    )
