"""A pretrained tower's input conventions, read from its checkpoint into a config's `dataset` section.

A tower expects images as its processor made them in pretraining (size, crop, resampling filter, mean
and std) and text as its own tokenizer splits it. `use_checkpoint_inputs` reads them from the
checkpoint directory (`preprocessor_config.json`, `tokenizer.json` or `spiece.model`) into
`config.dataset`, where the input pipeline applies them to any dataset, so a config needs one line:

    use_checkpoint_inputs(config.dataset, "/ckpts/clip-vit-b16")
"""

import os
from pathlib import Path
from typing import Any

import ml_collections

from mmlearn.errors import CheckpointError
from mmlearn.pretrained import checkpoint

PREPROCESSOR = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
# Pillow's filter numbers, as processors store them.
RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _side(value: Any, where: str) -> int:
  """An image size as processors write it: an int, {"shortest_edge": n} or {"height": n, "width": n}."""
  if isinstance(value, int):
    return value
  if isinstance(value, dict):
    if "shortest_edge" in value:
      return int(value["shortest_edge"])
    if value.get("height") == value.get("width") and value.get("height"):
      return int(value["height"])
  raise CheckpointError(f"{where}: image size {value!r} is not square; mmlearn reads square inputs")


def image_settings(directory: str | os.PathLike) -> dict[str, Any]:
  """`dataset` keys from `preprocessor_config.json`: image_size, image_crop, image_resample, mean, std."""
  config = checkpoint.read_json(directory, PREPROCESSOR)
  where = str(Path(directory) / PREPROCESSOR)
  if config.get("do_rescale", True) and abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
    raise CheckpointError(f"{where}: rescale_factor {config['rescale_factor']} is not 1/255")
  crop = bool(config.get("do_center_crop", False))
  size = _side(config["crop_size"] if crop else config["size"], where)
  resample = config.get("resample", 2)
  if resample not in RESAMPLE:
    raise CheckpointError(f"{where}: resample {resample} is not one of {RESAMPLE}")
  normalise = config.get("do_normalize", True)
  return {
    "image_size": size,
    "image_crop": crop,
    "image_resample": RESAMPLE[resample],
    "image_mean": tuple(config["image_mean"]) if normalise else (0.0,),
    "image_std": tuple(config["image_std"]) if normalise else (1.0,),
  }


def tokenizer_file(directory: str | os.PathLike) -> str:
  """The checkpoint's tokenizer file (`tokenizer.json` first), or a `CheckpointError` naming both."""
  for name in TOKENIZER_FILES:
    if (Path(directory) / name).is_file():
      return str(Path(directory) / name)
  raise CheckpointError(f"checkpoint {directory} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")


def use_checkpoint_inputs(
  dataset: ml_collections.ConfigDict, directory: str, *, images: bool = True, text: bool = True
) -> None:
  """Sets `dataset`'s image and/or text reading to the checkpoint's (see the module docstring)."""
  if images:
    dataset.update(image_settings(directory))
  if text:
    dataset.tokenizer = tokenizer_file(directory)
