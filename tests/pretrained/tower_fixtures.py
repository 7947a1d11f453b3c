"""What `test_clip` and `test_siglip` share: one fixture's two towers with their parameters, loaded as
the run's setup loads them (`FORMATS[...].to_params` of the whole checkpoint), and small comparisons."""

from pathlib import Path

import jax
import numpy as np

from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import checkpoint
from mmlearn.pretrained.formats import FORMATS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pretrained"


def towers(family: str, name: str, dtype: str = "float32"):
  """(vision module, vision params, text module, text params, reference outputs) of fixture `name`, whose
  towers are `{family}_vision` and `{family}_text`."""
  directory = str(FIXTURES / name)
  config = checkpoint.read_config(directory, (family,))
  tensors = checkpoint.read_tensors(directory)
  where = f"{directory}/model.safetensors"
  vision, text = f"{family}_vision", f"{family}_text"
  return (
    ENCODERS.get(vision)(checkpoint=directory, dtype=dtype),
    FORMATS.get(vision).to_params(tensors, config, where),
    ENCODERS.get(text)(checkpoint=directory, dtype=dtype),
    FORMATS.get(text).to_params(tensors, config, where),
    dict(np.load(FIXTURES / name / "reference.npz")),
  )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  return a @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def shapes(tree):
  """(shape, dtype) of every leaf: what a module's `init` and a loaded checkpoint must agree on."""
  return jax.tree.map(lambda x: (tuple(x.shape), x.dtype), tree)
