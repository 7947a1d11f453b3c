"""Config validation before anything runs: unknown keys, wrong types and impossible values.

`config_flags` already rejects unknown keys and ill-typed values given on the command line; these checks
catch the same mistakes made inside config files (which may add keys freely), by comparing the config
against `configs/default.py`, and catch values whose type is right but whose meaning is not.
"""

from typing import Any

import ml_collections

from mmlearn import losses, optim, parallel
from mmlearn.models.encoders import ENCODERS
from mmlearn.models.fusion import FUSIONS

# Sub-trees whose keys are the user's to choose (modality names, encoder and fusion arguments).
FREE_FORM = ("model.modalities", "model.fusion_kwargs")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, ml_collections.ConfigDict | dict) and not prefix.startswith(FREE_FORM):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
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


def check_keys_and_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  ref = _flatten(reference)
  for key, value in _flatten(config).items():
    if key not in ref:
      raise ValueError(f"unknown config key {key!r}")
    if not _type_ok(value, ref[key]):
      raise TypeError(
        f"config key {key!r} should be {type(ref[key]).__name__}, got {type(value).__name__} {value!r}"
      )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError/TypeError with a one-line message naming the first problem found."""
  from configs import default  # The reference schema; imported late so library users may lack configs/.

  check_keys_and_types(config, default.get_config())
  for key in (
    "batch_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "retrieval.embed_dim",
    "retrieval.query_chunk",
  ):
    if config[key] <= 0:
      raise ValueError(f"config key {key!r} must be positive, got {config[key]}")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError("set num_epochs or num_train_steps to a positive value")
  if config.parallel.mode not in parallel.MODES:
    raise ValueError(f"unknown parallel.mode {config.parallel.mode!r}; known: {', '.join(parallel.MODES)}")
  optim.OPTIMIZERS.get(config.optimizer.name)
  FUSIONS.get(config.model.fusion)
  losses.LOSSES.get(config.retrieval.loss)
  if not config.model.modalities:
    raise ValueError("config.model.modalities is empty: configure at least one modality")
  for modality, encoder in config.model.modalities.items():
    if "encoder" not in encoder:
      raise ValueError(f"config.model.modalities.{modality} names no 'encoder'")
    ENCODERS.get(encoder["encoder"])
