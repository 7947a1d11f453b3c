"""The CLIP and SigLIP tower formats: a bitwise round trip, and one `CheckpointError` line per bad input."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from mmlearn.errors import CheckpointError
from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import checkpoint, clip, siglip
from mmlearn.pretrained.formats import FORMATS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pretrained"
FAMILIES = {"clip": clip.MODEL_TYPES, "siglip": siglip.MODEL_TYPES}
NAMES = ("clip_a", "clip_b", "siglip_a", "siglip_b")
MODEL_SCALARS = {"logit_scale", "logit_bias"}  # Top-level: belong to no tower.


def family(name: str) -> str:
  return name.split("_")[0]


def copy(name: str, tmp_path: Path) -> Path:
  target = tmp_path / name
  shutil.copytree(FIXTURES / name, target)
  return target


def load(directory: Path, tower: str) -> dict:
  config = checkpoint.read_config(directory, FORMATS.get(tower).model_types)
  tensors = checkpoint.read_tensors(directory)
  return FORMATS.get(tower).to_params(tensors, config, str(directory / checkpoint.WEIGHTS))


def one_line_error(function, *args) -> str:
  with pytest.raises(CheckpointError) as error:
    function(*args)
  message = str(error.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bitwise(name):
  directory = FIXTURES / name
  config = checkpoint.read_config(directory, FAMILIES[family(name)])
  tensors = checkpoint.read_tensors(directory)
  covered = set()
  for tower in (f"{family(name)}_vision", f"{family(name)}_text"):
    params = FORMATS.get(tower).to_params(tensors, config, name)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    back = FORMATS.get(tower).to_tensors(params, config)
    for key, value in back.items():
      assert value.dtype == tensors[key].dtype and value.shape == tensors[key].shape, key
      assert value.tobytes() == tensors[key].tobytes(), key
    assert not covered & set(back)
    covered |= set(back)
  assert set(tensors) == covered | (MODEL_SCALARS & set(tensors))  # The two towers cover the file.


@pytest.mark.parametrize("name", ["siglip_b", "clip_b"])
def test_written_back_checkpoint_reads_the_same(name, tmp_path):
  """`checkpoint.write` of both towers' tensors (+ the logit scalars) gives the fixture's file back."""
  directory = FIXTURES / name
  config = checkpoint.read_config(directory, FAMILIES[family(name)])
  tensors = checkpoint.read_tensors(directory)
  out = {key: tensors[key] for key in MODEL_SCALARS & set(tensors)}
  for tower in (f"{family(name)}_vision", f"{family(name)}_text"):
    out |= FORMATS.get(tower).to_tensors(FORMATS.get(tower).to_params(tensors, config, "x"), config)
  written = checkpoint.write(tmp_path / "export", config, out, copy_from=directory)
  again = checkpoint.read_tensors(written)
  layout = lambda ts: {k: (v.shape, v.dtype, v.tobytes()) for k, v in ts.items()}  # noqa: E731
  assert layout(again) == layout(tensors)
  for side_file in ("tokenizer.json", "spiece.model", "preprocessor_config.json"):
    if (directory / side_file).exists():
      assert (written / side_file).read_bytes() == (directory / side_file).read_bytes()


def test_legacy_position_ids_buffers_are_ignored(tmp_path):
  """Checkpoints saved by transformers < 4.31 carry int64 `position_ids`; they are not parameters."""
  directory = copy("clip_a", tmp_path)
  tensors = checkpoint.read_tensors(directory)
  tensors["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  tensors["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
  safetensors.numpy.save_file(tensors, directory / checkpoint.WEIGHTS, metadata={"format": "pt"})
  for tower in ("clip_vision", "clip_text"):
    expected = load(FIXTURES / "clip_a", tower)
    assert jax.tree.all(jax.tree.map(np.array_equal, load(directory, tower), expected))


def test_missing_config(tmp_path):
  directory = copy("clip_a", tmp_path)
  (directory / "config.json").unlink()
  message = one_line_error(load, directory, "clip_vision")
  assert "config.json" in message and str(directory) in message
  module = ENCODERS.get("clip_vision")(checkpoint=str(directory))
  one_line_error(module.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))


def test_missing_weights(tmp_path):
  directory = copy("siglip_a", tmp_path)
  (directory / "model.safetensors").unlink()
  assert "model.safetensors" in one_line_error(load, directory, "siglip_text")


def test_other_architecture(tmp_path):
  message = one_line_error(load, FIXTURES / "siglip_a", "clip_vision")
  assert "'siglip' checkpoint, not 'clip'" in message
  module = ENCODERS.get("clip_text")(checkpoint=str(FIXTURES / "siglip_a"))
  one_line_error(module.init, jax.random.key(0), np.ones((1, 4), np.int32))


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
  directory = copy("clip_b", tmp_path)
  tensors = checkpoint.read_tensors(directory)
  name = "vision_model.encoder.layers.1.mlp.fc1.weight"
  tensors[name] = tensors[name][:-1]
  safetensors.numpy.save_file(tensors, directory / checkpoint.WEIGHTS, metadata={"format": "pt"})
  message = one_line_error(load, directory, "clip_vision")
  assert f"'{name}' has shape (79, 40), expected (80, 40)" in message
  assert str(directory / checkpoint.WEIGHTS) in message
  load(directory, "clip_text")  # The other tower is intact.


def test_missing_tensor(tmp_path):
  directory = copy("siglip_b", tmp_path)
  tensors = checkpoint.read_tensors(directory)
  del tensors["vision_model.head.attention.in_proj_weight"]
  safetensors.numpy.save_file(tensors, directory / checkpoint.WEIGHTS, metadata={"format": "pt"})
  message = one_line_error(load, directory, "siglip_vision")
  assert "'vision_model.head.attention.in_proj_weight' (expected shape (120, 40)) is missing" in message


def test_config_of_another_size(tmp_path):
  """A config that disagrees with the file (one layer more) names the first tensor it does not find."""
  directory = copy("clip_a", tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config["text_config"]["num_hidden_layers"] = 3
  (directory / "config.json").write_text(json.dumps(config))
  message = one_line_error(load, directory, "clip_text")
  assert "'text_model.encoder.layers.2." in message and "is missing" in message


def test_truncated_weights(tmp_path):
  directory = copy("clip_a", tmp_path)
  path = directory / checkpoint.WEIGHTS
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  message = one_line_error(load, directory, "clip_text")
  assert "truncated" in message and str(path) in message
