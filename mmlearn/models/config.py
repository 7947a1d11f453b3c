"""Reading model configs: registered module names and their keyword arguments, checked before any tracing.

Every model (the classifier, the dual encoder, the MVAE) is configured the same way, with
`{"encoder": <registered name>, **kwargs}` per modality, and every task reads `config.model.modalities`
through `resolve_modalities`. These helpers are about the config, not any one model, so they live here
rather than in the classifier that first needed them.

A mistake in a config (an unknown argument, a missing one, an unregistered name) raises a `ConfigError`
naming the modality and the module, instead of a bare dataclass `__init__` error at trace time.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import ml_collections
from flax.core import FrozenDict

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS

# Dataclass fields every Linen module has, which are never configuration.
_LINEN_FIELDS = ("parent", "name")


def module_arguments(module_class: type[nn.Module]) -> tuple[set[str], set[str]]:
  """The (accepted, required) constructor arguments of a Linen module class, excluding parent/name."""
  fields = [f for f in dataclasses.fields(module_class) if f.init and f.name not in _LINEN_FIELDS]
  accepted = {f.name for f in fields}
  required = {
    f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  }
  return accepted, required


def check_arguments(module_class: type[nn.Module], kwargs: Mapping[str, Any], what: str) -> None:
  """Raises a `ConfigError` naming `what` (e.g. "encoder 'lstm' of modality 'text'") and the bad keys.

  Without this a typo in a config surfaces as a bare dataclass `__init__` error that names neither
  the modality nor the registry name the user wrote.
  """
  accepted, required = module_arguments(module_class)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ConfigError(
      f"{what} got unknown argument(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(accepted))}"
    )
  missing = sorted(required - set(kwargs))
  if missing:
    raise ConfigError(f"{what} is missing required argument(s) {', '.join(map(repr, missing))}")


def split_encoder_config(modality: str, config: Mapping[str, Any]) -> tuple[type[nn.Module], dict[str, Any]]:
  """Splits `{"encoder": name, **kwargs}` into the registered encoder class and its checked kwargs."""
  if "encoder" not in config:
    raise ConfigError(f"modality {modality!r} names no 'encoder' (known: {', '.join(ENCODERS.names())})")
  kwargs = {key: value for key, value in config.items() if key != "encoder"}
  encoder_class = ENCODERS.get(config["encoder"])
  check_arguments(encoder_class, kwargs, f"encoder {config['encoder']!r} of modality {modality!r}")
  return encoder_class, kwargs


def freeze_config(value: Any) -> Any:
  """ConfigDicts and dicts -> FrozenDicts, lists -> tuples, recursively, so the result is hashable."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return FrozenDict({key: freeze_config(item) for key, item in value.items()})
  if isinstance(value, list | tuple):
    return tuple(freeze_config(item) for item in value)
  return value


def resolve_modalities(modalities_config: Any, vocab_size: int | None) -> dict[str, dict[str, Any]]:
  """Checked `{modality: encoder config}` from `config.model.modalities`, with the dataset's vocab_size.

  Encoders with a `vocab_size` argument (text encoders) that the config leaves unset get the
  dataset's, so configs stay dataset-agnostic. Config mistakes raise here, before any tracing.
  """
  modalities = {}
  for modality, encoder_config in freeze_config(modalities_config or {}).items():
    encoder_config = dict(encoder_config)
    if "encoder" in encoder_config and encoder_config.get("vocab_size") is None:
      accepted, _ = module_arguments(ENCODERS.get(encoder_config["encoder"]))
      if "vocab_size" in accepted:
        if vocab_size is None:
          raise ConfigError(
            f"encoder {encoder_config['encoder']!r} of modality {modality!r} needs a vocab_size, "
            "but the dataset provides none and the config sets none"
          )
        encoder_config["vocab_size"] = vocab_size
    split_encoder_config(modality, encoder_config)
    modalities[modality] = encoder_config
  if not modalities:
    raise ConfigError("model config has no modalities configured")
  return modalities
