"""Loading pretrained towers into a run, wherever its model builds them, and freezing them.

A config selects a tower with one line per modality (`tower`):

    config.model.modalities.image = tower("clip_vision", "/ckpts/clip-vit-b16", freeze=True)

The model (a classifier with any fusion, a dual encoder, a flow's condition encoder) builds the tower as
it builds any encoder, so the run's setup finds the towers by tracing the task's `init` abstractly and
noting every tower module it calls, with its path in the parameter tree (`find_towers`). It then
replaces each tower's seeded initialisation by its checkpoint's weights (`load`), and freezes the towers
that ask for it (`frozen_pattern`, joined to `optimizer.frozen`). Checkpoint-level scalars go to the
model's own where it has them: CLIP's and SigLIP's `logit_scale` become the dual encoder's `log_scale`,
SigLIP's `logit_bias` its `bias`, when every loaded tower comes from that one checkpoint.
"""

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmlearn.errors import CheckpointError
from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import checkpoint
from mmlearn.pretrained.formats import FORMATS

# Checkpoint tensors that belong to no tower -> the model-level parameter they initialise.
MODEL_SCALARS = {"logit_scale": "log_scale", "logit_bias": "bias"}


def tower(
  encoder: str, directory: str, *, load: bool = True, freeze: bool = False, **kwargs: Any
) -> ml_collections.ConfigDict:
  """A modality's encoder config selecting a pretrained tower: `{"encoder": ..., "checkpoint": ...}`.

  `load` False builds the architecture of `directory`'s config.json with a seeded initialisation
  (pretraining from scratch at a released size); `freeze` keeps the loaded weights fixed.
  """
  FORMATS.get(encoder)
  return ml_collections.ConfigDict(
    {"encoder": encoder, "checkpoint": str(directory), "load": load, "freeze": freeze, **kwargs}
  )


# A checkpoint's `model_type` -> its towers by the modality they read.
TOWERS_BY_TYPE = {
  "clip": {"image": "clip_vision", "text": "clip_text"},
  "siglip": {"image": "siglip_vision", "text": "siglip_text"},
  "audio-spectrogram-transformer": {"audio": "ast"},
}


def towers_of(directory: str, modalities: Sequence[str]) -> tuple[str, ...]:
  """The tower encoder names of `directory`'s architecture for `modalities`, e.g. ("clip_vision",)."""
  config = checkpoint.read_config(directory, tuple(TOWERS_BY_TYPE))
  towers = TOWERS_BY_TYPE[config["model_type"]]
  missing = [m for m in modalities if m not in towers]
  if missing:
    raise CheckpointError(
      f"{directory} is a {config['model_type']!r} checkpoint: it has no {missing[0]} tower"
    )
  return tuple(towers[m] for m in modalities)


def max_text_positions(directory: str) -> int:
  """How many tokens the checkpoint's text tower reads (its position table's length)."""
  config = checkpoint.read_json(directory, checkpoint.CONFIG)
  return int(config.get("text_config", config)["max_position_embeddings"])


@dataclasses.dataclass(frozen=True)
class Tower:
  path: str  # `/`-separated path of the tower's subtree in the parameter tree, e.g. "image_encoder".
  encoder: str  # Its registered name, e.g. "clip_vision".
  checkpoint: str
  load: bool
  freeze: bool


def _tower_classes() -> dict[type, str]:
  return {ENCODERS.get(name): name for name in FORMATS.names()}


def find_towers(init: Callable[..., Any], *args: Any) -> list[Tower]:
  """The pretrained towers `init(*args)` builds, found by tracing it abstractly (nothing is computed)."""
  classes = _tower_classes()
  found: dict[str, Tower] = {}

  def note(next_fun, call_args, call_kwargs, context):
    module = context.module
    if context.method_name == "__call__" and type(module) in classes:
      path = "/".join(module.path)
      found[path] = Tower(path, classes[type(module)], module.checkpoint, module.load, module.freeze)
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(note):
    jax.eval_shape(init, *args)
  return [found[path] for path in sorted(found)]


def frozen_pattern(towers: Iterable[Tower], frozen: str = "") -> str:
  """`optimizer.frozen` extended to the towers that ask to be frozen (a regex matched at a path's start)."""
  patterns = [f"{re.escape(t.path)}/" for t in towers if t.freeze]
  if not patterns:
    return frozen
  return "|".join([f"(?:{frozen})", *patterns] if frozen else patterns)


def names_towers(config: Any) -> bool:
  """Whether any encoder config in `config` (a ConfigDict or dict, searched throughout) is a tower."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  if isinstance(config, Mapping):
    encoder = config.get("encoder")
    if isinstance(encoder, str) and encoder in FORMATS:
      return True
    return any(names_towers(value) for value in config.values())
  return False


def subtree_at(tree: Mapping[str, Any], path: str) -> Any:
  """The subtree of `tree` at the `/`-separated `path` (a tower's, found by `find_towers`)."""
  for name in path.split("/"):
    tree = tree[name]
  return tree


def _replaced(tree: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
  head, _, rest = path.partition("/")
  return {**tree, head: _replaced(tree[head], rest, value) if rest else value}


def _check_layout(initialised: Any, loaded: Any, where: str) -> None:
  """The loaded subtree has exactly the parameters (names and shapes) the model initialised."""
  mine = {jax.tree_util.keystr(k): x.shape for k, x in jax.tree_util.tree_flatten_with_path(initialised)[0]}
  theirs = {jax.tree_util.keystr(k): x.shape for k, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  for key in sorted(set(mine) | set(theirs)):
    if mine.get(key) != theirs.get(key):
      raise CheckpointError(
        f"{where}: parameter {key} is {theirs.get(key)} in the checkpoint, the model has {mine.get(key)}"
      )


def _on_device(tree: dict[str, Any]) -> dict[str, Any]:
  """`tree`'s float32 numpy leaves as JAX arrays, each host copy dropped as soon as it is placed, so
  the peak is one tower's parameters plus one tensor rather than twice the tower (changes `tree`)."""
  for name, value in tree.items():
    tree[name] = (
      _on_device(value) if isinstance(value, dict) else jax.device_put(np.asarray(value, np.float32))
    )
  return tree


def load(variables: Mapping[str, Any], towers: Sequence[Tower]) -> dict[str, Any]:
  """`variables` with every tower whose `load` is set replaced by its checkpoint's weights (float32)."""
  params = dict(variables["params"])
  loaded_from = set()
  for t in towers:
    if not t.load:
      continue
    config = checkpoint.read_json(t.checkpoint, checkpoint.CONFIG)
    tensors = checkpoint.MappedTensors(t.checkpoint)
    subtree = FORMATS.get(t.encoder).to_params(tensors, config, str(tensors.path))
    _check_layout(subtree_at(params, t.path), subtree, str(tensors.path))
    params = _replaced(params, t.path, _on_device(subtree))
    loaded_from.add(str(Path(t.checkpoint).resolve()))
  if len(loaded_from) == 1:
    (directory,) = loaded_from
    tensors = checkpoint.MappedTensors(directory)
    for name, target in MODEL_SCALARS.items():
      if name in tensors and target in params:
        params[target] = np.asarray(tensors[name], np.float32).reshape(np.shape(params[target]))
  return {**variables, "params": params}


def check_tokenizer(towers: Sequence[Tower], tokenizer: Any) -> None:
  """A `CheckpointError` when a text tower's vocabulary differs from the dataset tokenizer's."""
  for t in towers:
    if not t.encoder.endswith("_text"):
      continue
    config = checkpoint.read_json(t.checkpoint, checkpoint.CONFIG)
    expected = config.get("text_config", config).get("vocab_size")
    found = None if tokenizer is None else tokenizer.vocab_size
    if expected is not None and found != expected:
      raise CheckpointError(
        f"dataset.tokenizer has {found} tokens but {Path(t.checkpoint) / checkpoint.CONFIG} says the text "
        f"tower's vocab_size is {expected}: use the checkpoint's tokenizer.json or spiece.model"
      )
