"""How a pretrained tower's parameters are named in its released checkpoint, by the tower's encoder name.

A tower is a registered encoder (`mmlearn.models.encoders.ENCODERS`, e.g. "clip_vision") whose
architecture comes from a checkpoint directory's `config.json`. Its `TowerFormat`, registered here under
the same name, maps between the checkpoint's tensors (Hugging Face names, numpy arrays) and the tower
module's Flax parameter subtree. The run's setup uses it to load a tower wherever a model builds one
(`mmlearn.pretrained.loading`), and export uses it to write the tower back (`mmlearn.pretrained.export`).
"""

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from mmlearn.registry import Registry

Tensors = Mapping[str, np.ndarray]
Params = dict[str, Any]  # A nested dict of numpy arrays: one module's `params` subtree.


class TowerFormat(Protocol):
  """The checkpoint <-> parameter mapping of one tower (one part of a checkpoint: a vision tower, say)."""

  # `config.json` `model_type`s this tower reads, e.g. ("clip",).
  model_types: tuple[str, ...]

  def to_params(self, tensors: Tensors, config: Mapping[str, Any], where: str) -> Params:
    """The tower's float32 parameter subtree from the whole checkpoint's `tensors`.

    Raises a `CheckpointError` naming `where` (the file) and the first tensor of this tower that is
    missing, unexpected or of another shape (`mmlearn.pretrained.checkpoint.check_fits`).
    """
    ...

  def to_tensors(self, params: Params, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """This tower's tensors under their checkpoint names: the exact inverse of `to_params` (float32)."""
    ...


FORMATS: Registry[TowerFormat] = Registry("pretrained tower")
