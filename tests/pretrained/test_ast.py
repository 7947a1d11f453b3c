"""The `ast` tower and its filter-bank features against transformers' `ASTModel` and `ASTFeatureExtractor`.

The references are fixtures made by the libraries themselves (`tests/fixtures/make_pretrained_audio.py`,
versions in `tests/fixtures/pretrained/versions_audio.json`): two random checkpoints of different
architectures, with waveforms, the extractor's features and the model's outputs. No torch here.
"""

import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from mmlearn.errors import CheckpointError, ConfigError, DataError, one_line
from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import checkpoint
from mmlearn.pretrained.ast import MODEL_TYPES, AudioSpectrogramTransformer, architecture
from mmlearn.pretrained.audio_features import FRAME_LENGTH, HOP_LENGTH, FilterBank
from mmlearn.pretrained.formats import FORMATS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained"
NAMES = ("ast_a", "ast_b")
# Features: the same float64 computation with the reference's roundings (to float32 input, complex64
# spectrum, float32 log), so only the order of float64 sums may differ; observed: bitwise equal.
FEATURES_ATOL = 1e-4
FLOAT32_ATOL = 1e-5  # observed <= 1.5e-6 (last_hidden_state), 6e-7 (pooler_output)
# bfloat16 keeps 8 significant bits; over 2-3 blocks of outputs of size ~2 we observe <= 0.026.
BFLOAT16_ATOL = 0.1


@functools.cache
def loaded(name: str) -> tuple[dict, dict, dict, dict]:
  """(config, tensors, params, reference arrays) of one fixture."""
  directory = FIXTURES / name
  config = checkpoint.read_config(directory, MODEL_TYPES)
  tensors = checkpoint.read_tensors(directory)
  params = FORMATS.get("ast").to_params(tensors, config, str(directory / checkpoint.WEIGHTS))
  reference = dict(np.load(directory / "reference.npz"))
  return config, tensors, params, reference


def waveforms(reference: dict) -> list[np.ndarray]:
  return [reference[key] for key in sorted(reference) if key.startswith("waveform_")]


@pytest.mark.parametrize("name", NAMES)
def test_features_equal_the_reference_extractor_padded_and_truncated(name):
  *_, reference = loaded(name)
  bank = FilterBank.from_pretrained(FIXTURES / name)
  frames = [1 + (w.size - FRAME_LENGTH) // HOP_LENGTH for w in waveforms(reference)]
  assert min(frames) < bank.max_length < max(frames)  # Both padding and truncation are exercised.
  for waveform, expected in zip(waveforms(reference), reference["features"], strict=True):
    features = bank(waveform, sampling_rate=16000)
    assert features.dtype == np.float32 and features.shape == (bank.max_length, bank.num_mel_bins)
    np.testing.assert_allclose(features, expected, rtol=0, atol=FEATURES_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_float32_outputs_equal_the_reference_model(name):
  _, _, params, reference = loaded(name)
  model = AudioSpectrogramTransformer(str(FIXTURES / name))
  variables = {"params": params}
  tokens = jax.jit(functools.partial(model.apply, method=model.tokens))(variables, reference["features"])
  pooled = jax.jit(model.apply)(variables, reference["features"])
  assert pooled.dtype == np.float32 and pooled.shape == reference["pooler_output"].shape
  np.testing.assert_allclose(tokens, reference["last_hidden_state"], rtol=0, atol=FLOAT32_ATOL)
  np.testing.assert_allclose(pooled, reference["pooler_output"], rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_outputs_near_the_reference_model(name):
  _, _, params, reference = loaded(name)
  model = AudioSpectrogramTransformer(str(FIXTURES / name), dtype="bfloat16")
  pooled = np.asarray(jax.jit(model.apply)({"params": params}, reference["features"]))
  assert pooled.dtype == np.float32
  difference = np.abs(pooled - reference["pooler_output"]).max()
  assert 0 < difference <= BFLOAT16_ATOL  # > 0: it really computed in bfloat16.


@pytest.mark.parametrize("name", NAMES)
def test_params_fit_the_module_and_map_back_bit_for_bit(name):
  config, tensors, params, reference = loaded(name)
  model = ENCODERS.get("ast")(checkpoint=str(FIXTURES / name))
  initial = jax.eval_shape(model.init, jax.random.key(0), reference["features"])["params"]
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert jax.tree.map(lambda x: x.shape, initial) == shapes
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  back = FORMATS.get("ast").to_tensors(params, config)
  assert sorted(back) == sorted(tensors)
  for key, value in tensors.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert back[key].tobytes() == value.tobytes(), key


def test_export_writes_a_checkpoint_that_reads_back_equal(tmp_path):
  config, tensors, params, reference = loaded("ast_a")
  target = checkpoint.write(
    tmp_path / "export", config, FORMATS.get("ast").to_tensors(params, config), copy_from=FIXTURES / "ast_a"
  )
  found = checkpoint.read_tensors(target)
  assert {k: (v.shape, v.dtype, v.tobytes()) for k, v in found.items()} == {
    k: (v.shape, v.dtype, v.tobytes()) for k, v in tensors.items()
  }
  features = FilterBank.from_pretrained(target)(waveforms(reference)[0], 16000)
  np.testing.assert_array_equal(features, reference["features"][0])


def test_classification_checkpoint_reads_the_tower_under_its_prefix():
  config, tensors, params, _ = loaded("ast_b")
  config = dict(config, architectures=["ASTForAudioClassification"])
  prefixed = {f"audio_spectrogram_transformer.{k}": v for k, v in tensors.items()}
  head = {"classifier.dense.weight": np.zeros((5, 24), np.float32)}
  fmt = FORMATS.get("ast")
  again = fmt.to_params(prefixed | head, config, "classification")
  assert jax.tree.all(jax.tree.map(np.array_equal, again, params))
  assert sorted(fmt.to_tensors(again, config)) == sorted(prefixed)


def other_architecture(tmp_path: Path) -> Path:
  """A CLIP or SigLIP fixture if there is one, else a config.json of model_type "clip"."""
  for candidate in sorted(FIXTURES.glob("*")):
    if (candidate / "config.json").is_file() and not candidate.name.startswith("ast"):
      return candidate
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
  return tmp_path


def test_other_architecture_is_one_line_checkpoint_error(tmp_path):
  directory = other_architecture(tmp_path)
  with pytest.raises(CheckpointError, match="not 'audio-spectrogram-transformer'") as error:
    architecture(str(directory))
  assert "\n" not in str(error.value)


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
  config, tensors, *_ = loaded("ast_a")
  directory = tmp_path / "bad"
  shutil.copytree(FIXTURES / "ast_a", directory)
  name = "encoder.layer.1.intermediate.dense.weight"
  bad = dict(tensors, **{name: np.zeros((65, 32), np.float32)})
  safetensors.numpy.save_file(bad, directory / checkpoint.WEIGHTS)
  with pytest.raises(CheckpointError) as error:
    FORMATS.get("ast").to_params(checkpoint.read_tensors(directory), config, str(directory))
  message = one_line(error.value)
  assert name in message and "(65, 32)" in message and "(64, 32)" in message and "\n" not in str(error.value)


def test_wrong_sampling_rate_is_one_line_data_error():
  bank = FilterBank.from_pretrained(FIXTURES / "ast_a")
  with pytest.raises(DataError, match="8000 Hz") as error:
    bank(np.zeros(16000, np.float32), sampling_rate=8000)
  assert "\n" not in str(error.value)


def test_features_of_another_size_are_refused():
  _, _, params, reference = loaded("ast_a")
  model = AudioSpectrogramTransformer(str(FIXTURES / "ast_a"))
  with pytest.raises(ConfigError, match="64 frames, 64 mel bins"):
    model.apply({"params": params}, reference["features"][:, :48])
