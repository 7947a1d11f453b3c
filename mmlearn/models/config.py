"""Reading model configs: registered module names and their keyword arguments, checked before any tracing.

Every model (the classifier, the dual encoder, the MVAE) is configured the same way, with
`{"encoder": <registered name>, **kwargs}` per modality, and every task reads `config.model.modalities`
through `resolve_modalities`. These helpers are about the config, not any one model, so they live here
rather than in the classifier that first needed them.

A mistake in a config (an unknown argument, a missing one, an unregistered name) raises a `ConfigError`
naming the modality and the module, instead of a bare dataclass `__init__` error at trace time.

Precision: `config.precision` names the computation dtype (`compute_dtype`), which the models hand to
every encoder, fusion and decoder they build (`with_dtype`). A module's own `dtype` in the config wins,
so one tower can be pinned to float32 in a bfloat16 model.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from flax.core import FrozenDict
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS

# Dataclass fields every Linen module has, which are never configuration.
_LINEN_FIELDS = ("parent", "name")
# `config.precision` -> computation dtype. Parameters, optimizer state, losses and metrics stay float32.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(precision: str) -> jnp.dtype:
  """The computation dtype named by `config.precision` ("float32" or "bfloat16")."""
  if precision not in PRECISIONS:
    raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
  return jnp.dtype(PRECISIONS[precision])


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


def with_dtype(
  module_class: type[nn.Module], kwargs: Mapping[str, Any], dtype: DTypeLike, what: str
) -> dict[str, Any]:
  """`kwargs` plus `dtype=dtype`, unless they set their own; a `ConfigError` if the module takes no dtype.

  A module without a `dtype` attribute (a fork's new encoder, say) is still built in float32, where it
  changes nothing; asked for another precision it raises rather than silently compute in float32.
  """
  kwargs = dict(kwargs)
  accepted, _ = module_arguments(module_class)
  if "dtype" in accepted:
    kwargs.setdefault("dtype", dtype)
  elif jnp.dtype(dtype) != jnp.float32:
    raise ConfigError(f"{what} has no 'dtype' attribute, so it cannot compute in {jnp.dtype(dtype).name}")
  return kwargs


def build_encoder(modality: str, config: Mapping[str, Any], *, dtype: DTypeLike, name: str) -> nn.Module:
  """The registered encoder of `config` (`{"encoder": name, **kwargs}`), computing in `dtype`."""
  encoder_class, kwargs = split_encoder_config(modality, config)
  kwargs = with_dtype(encoder_class, kwargs, dtype, f"encoder {config['encoder']!r} of modality {modality!r}")
  return encoder_class(**kwargs, name=name)


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
