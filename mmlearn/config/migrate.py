"""Reads a run's saved `config.json` in today's layout, whichever version of mmlearn wrote it.

Runs outlive code: a run trained before a key existed, or before a key moved, must still restore,
resume and be evaluated by the tools, with exactly the settings it trained with. `upgrade` turns a saved
config into today's layout in three steps:

1. Keys that moved are moved (`MOVED`; in version 3 the classification-only keys left `model` and
   `dataset` for the task's own `classification` section), evaluator types that were merged are
   renamed (`RENAMED_EVALUATORS`: `elbo` and `flow_loss` became `loss`), and a LeNet encoder without
   `batch_norm` gets `False`, the block it had by default before version 3 made the key required; in
   version 4 the `captioned` builder's text options became `dataset.tokenizer`, `min_count`, `vocab_size`.
2. Sections of other tasks are dropped: until version 3 every run carried every task's section, which
   the run never read.
3. Keys the run's task has today but the saved config lacks get their default: they did not exist when
   the run trained, so the run trained with what the default does (the code before the key behaved as
   its default; a key whose default changes behaviour gets a migration of its own here instead).

A saved config that cannot be read this way (no task, an unknown task) is refused in one line naming
the file; nothing is guessed.
"""

import copy
import json
from collections.abc import Mapping
from typing import Any

from mmlearn.config import schema
from mmlearn.config.schema import FREE_FORM
from mmlearn.errors import ConfigError

# Version 3 (task-owned sections): old dotted key -> new dotted key.
MOVED = {
  "model.fusion": "classification.fusion",
  "model.fusion_kwargs": "classification.fusion_kwargs",
  "model.head_hidden": "classification.head_hidden",
  "model.head_dropout": "classification.head_dropout",
  "dataset.imbalance_ratio": "classification.imbalance_ratio",
  "dataset.imbalance_seed": "classification.imbalance_seed",
  "dataset.sampler": "classification.sampler",
}
RENAMED_EVALUATORS = {"elbo": "loss", "flow_loss": "loss"}
# Version 4 (captions tokenized in the pipeline): the `captioned` builder's text options became the
# dataset's, read by any builder with captions.
CAPTIONED_TEXT_OPTIONS = ("tokenizer", "min_count", "vocab_size")
# Every section some task owns; a run keeps only its own task's.
TASK_SECTIONS = ("classification", "missing", "retrieval", "mvae", "flow")

JSON = dict[str, Any]


def upgrade(saved: Mapping[str, Any], *, where: str = "config.json") -> JSON:
  """`saved` (a config as `config.json` holds it) in today's layout; `where` names it in errors."""
  config = copy.deepcopy(dict(saved))
  task = config.get("task")
  if not isinstance(task, str):
    raise ConfigError(f"{where} names no task; it is not the config of an mmlearn run")
  try:
    sections = schema.task_sections(task)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None
  for old, new in MOVED.items():
    value = _pop(config, old)
    if value is not _ABSENT and new.split(".")[0] in sections:
      _set(config, new, value)
  for name in TASK_SECTIONS:
    if name not in sections:
      config.pop(name, None)
  dataset = config.get("dataset") or {}
  if dataset.get("name") == "captioned":
    for key in CAPTIONED_TEXT_OPTIONS:
      if key in (dataset.get("options") or {}):
        dataset[key] = dataset["options"].pop(key)
  for encoder in (config.get("model", {}).get("modalities") or {}).values():
    if isinstance(encoder, dict) and encoder.get("encoder") == "lenet":
      encoder.setdefault("batch_norm", False)
  for entry in (config.get("evals") or {}).values():
    if isinstance(entry, dict) and entry.get("type") in RENAMED_EVALUATORS:
      entry["type"] = RENAMED_EVALUATORS[entry["type"]]
  defaults = json.loads(schema.get_config(task).to_json_best_effort())  # As config.json holds it.
  return _with_defaults(config, defaults, "")


_ABSENT = object()


def _pop(tree: JSON, dotted: str) -> object:
  *parents, leaf = dotted.split(".")
  for part in parents:
    child = tree.get(part)
    if not isinstance(child, dict):
      return _ABSENT
    tree = child
  return tree.pop(leaf, _ABSENT)


def _set(tree: JSON, dotted: str, value: object) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def _with_defaults(saved: JSON, defaults: JSON, prefix: str) -> JSON:
  """`saved` with every key of `defaults` it lacks; a free-form sub-tree (modality names, an evaluator
  list) is the saved one whole, never merged with the default's entries."""
  out = dict(saved)
  for key, default in defaults.items():
    path = f"{prefix}.{key}" if prefix else key
    if key not in out:
      out[key] = default
    elif isinstance(default, dict) and isinstance(out[key], dict) and not path.startswith(FREE_FORM):
      out[key] = _with_defaults(out[key], default, path)
  return out
