"""Pretrained towers inside runs: found wherever a model builds them, loaded so that step 0 scores as the
released model, frozen on request, and every bad checkpoint a one-line error."""

import pathlib
import re
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from conftest import main_in_process
from mmlearn import data, optim
from mmlearn.config import files
from mmlearn.errors import CheckpointError
from mmlearn.pretrained import checkpoint, loading
from mmlearn.runs import restore
from mmlearn.tasks import TASKS
from mmlearn.train import state as train_state

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "pretrained"


def retrieval_config(name, data_dir, mode="full"):
  config = files.get_config(f"configs/pretrained/retrieval.py:ckpt={FIXTURES / name},mode={mode}")
  config.unlock()
  config.dataset.update(config="retrieval_tiny", data_dir=data_dir)
  return config


def built(config):
  """(task, towers, the step-0 variables with the towers loaded, the training source)."""
  sources, info = restore.load_sources(config, ("train",))
  task = TASKS.get("retrieval")(config, info=info, vocab_size=None)
  example = train_state.example_batch(config, sources["train"], 2)
  rng = train_state.init_keys(config)[0]
  towers = loading.find_towers(task.init, rng, example)
  return task, towers, loading.load(task.init(rng, example), towers), sources["train"]


@pytest.mark.parametrize("name", ["clip_b", pytest.param("siglip_a", marks=pytest.mark.e2e)])
def test_a_loaded_dual_encoder_scores_as_the_released_model(name, retrieval_tiny_data):
  """Towers found at their paths, weights and logit scale/bias loaded: the reference's logits at step 0."""
  task, towers, variables, _ = built(retrieval_config(name, retrieval_tiny_data[0]))
  assert [(t.path, t.load, t.freeze) for t in towers] == [
    ("image_encoder", True, False),
    ("text_encoder", True, False),
  ]
  ref = np.load(FIXTURES / name / "reference.npz")
  mask = ref["attention_mask"].astype(bool)
  batch = {"image": ref["pixel_values"], "text": np.where(mask, ref["input_ids"], 0), "text_mask": mask}
  embeddings = task.embed(variables, batch)
  params = variables["params"]
  logits = np.exp(params["log_scale"]) * embeddings["image"] @ embeddings["text"].T
  if "bias" in params:
    logits = logits + params["bias"]
  np.testing.assert_allclose(logits, ref["logits_per_image"], rtol=0, atol=1e-4)


def test_scratch_mode_builds_the_architecture_without_its_weights(retrieval_tiny_data):
  _, towers, variables, _ = built(retrieval_config("clip_a", retrieval_tiny_data[0], mode="scratch"))
  assert not any(t.load for t in towers)
  tensors = checkpoint.read_tensors(FIXTURES / "clip_a")
  kernel = variables["params"]["image_encoder"]["visual_projection"]["kernel"]
  assert kernel.shape == tensors["visual_projection.weight"].T.shape
  assert not np.allclose(kernel, tensors["visual_projection.weight"].T)


def test_frozen_towers_are_outside_the_optimizer(retrieval_tiny_data):
  config = retrieval_config("clip_a", retrieval_tiny_data[0], mode="frozen")
  task, towers, variables, source = built(config)
  pattern = loading.frozen_pattern(towers, config.optimizer.frozen)
  labels = optim.frozen_labels(pattern)(variables["params"])
  assert (
    set(jax.tree.leaves(labels["image_encoder"]))
    == set(jax.tree.leaves(labels["text_encoder"]))
    == {"frozen"}
  )
  assert labels["log_scale"] == "train"
  assert loading.frozen_pattern(towers, "head") == r"(?:head)|image_encoder/|text_encoder/"
  assert loading.frozen_pattern([], "head") == "head"


@pytest.mark.e2e  # Builds the AV-MNIST task and loads a tower.
def test_towers_are_found_in_a_classifier_too(avmnist_data_dir):
  config = files.get_config(f"configs/pretrained/fusion.py:ckpt={FIXTURES / 'clip_a'}")
  config.unlock()
  config.dataset.update(config="tiny", data_dir=avmnist_data_dir)
  sources, info = restore.load_sources(config, ("train",))
  task = TASKS.get("classification")(config, info=info, vocab_size=None, train_source=sources["train"])
  example = train_state.example_batch(config, sources["train"], 2)
  assert example["image"].shape == (2, 32, 32, 3)  # 28x28 grey digits read as the tower's RGB input.
  towers = loading.find_towers(task.init, jax.random.PRNGKey(0), example)
  assert [(t.path, t.encoder, t.freeze) for t in towers] == [("image_encoder", "clip_vision", True)]
  loaded = loading.load(task.init(jax.random.PRNGKey(0), example), towers)
  tensors = checkpoint.read_tensors(FIXTURES / "clip_a")
  np.testing.assert_array_equal(
    loaded["params"]["image_encoder"]["visual_projection"]["kernel"], tensors["visual_projection.weight"].T
  )


def test_a_tokenizer_of_another_vocabulary_is_refused():
  tower = loading.Tower("text_encoder", "clip_text", str(FIXTURES / "clip_a"), True, False)
  with pytest.raises(CheckpointError, match=r"has 69 tokens .* vocab_size is \d+"):
    loading.check_tokenizer(
      [tower], data.tokenizer_choice.load_file(str(FIXTURES / "siglip_a" / "spiece.model"))
    )


def broken_copies(tmp_path):
  """name -> (a damaged copy of clip_a, what its one-line error must say)."""
  cases = {}
  for name in ("no_weights", "truncated", "wrong_shape", "other_architecture"):
    shutil.copytree(FIXTURES / "clip_a", tmp_path / name)
  (tmp_path / "no_weights" / "model.safetensors").unlink()
  cases["no_weights"] = "has no model.safetensors"
  weights = tmp_path / "truncated" / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-100])
  cases["truncated"] = "is truncated or not a safetensors file"
  tensors = checkpoint.read_tensors(FIXTURES / "clip_a")
  tensors["visual_projection.weight"] = np.zeros((17, 32), np.float32)
  shutil.rmtree(tmp_path / "wrong_shape")
  checkpoint.write(
    tmp_path / "wrong_shape",
    checkpoint.read_json(FIXTURES / "clip_a", "config.json"),
    tensors,
    copy_from=FIXTURES / "clip_a",
  )
  cases["wrong_shape"] = r"'visual_projection.weight' has shape \(17, 32\), expected \(16, 32\)"
  shutil.rmtree(tmp_path / "other_architecture")
  shutil.copytree(FIXTURES / "siglip_a", tmp_path / "other_architecture")
  return cases


def test_bad_checkpoints_end_a_run_with_one_line(tmp_path, capsys, retrieval_tiny_data):
  for name, message in broken_copies(tmp_path).items():
    directory = tmp_path / name
    argv = [
      f"--config=configs/pretrained/retrieval.py:ckpt={FIXTURES / 'clip_a'}",
      f"--workdir={tmp_path / ('run_' + name)}",
      f"--config.model.modalities.image.checkpoint={directory}",
      f"--config.dataset.data_dir={retrieval_tiny_data[0]}",
      "--config.dataset.config=retrieval_tiny",
      "--config.num_train_steps=1",
    ]
    status, err = main_in_process(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(lines) == 1, (name, err[-2000:])
    if name == "other_architecture":
      message = "is a 'siglip' checkpoint, not 'clip'"
    assert re.search(message, lines[0]), (name, lines[0])
    assert not (tmp_path / ("run_" + name) / "checkpoints").exists()


def test_missing_checkpoint_directory_is_one_line_at_config_time(tmp_path, capsys):
  status, err = main_in_process(
    [
      f"--config=configs/pretrained/retrieval.py:ckpt={tmp_path / 'nowhere'}",
      f"--workdir={tmp_path / 'run'}",
    ],
    capsys,
  )
  assert status == 1 and "checkpoint directory" in err and "does not exist" in err
  assert not (tmp_path / "run").exists()


def test_tower_helper_rejects_unknown_towers():
  with pytest.raises(Exception, match="unknown pretrained tower 'clip_audio'"):
    loading.tower("clip_audio", str(FIXTURES / "clip_a"))
  assert isinstance(loading.tower("clip_text", "x"), ml_collections.ConfigDict)


@pytest.mark.e2e  # Builds a whole flow run.
def test_a_flows_condition_encoder_can_be_a_pretrained_tower(retrieval_tiny_data):
  """Caption -> image flow with CLIP's text tower reading the caption: found inside the flow's model,
  loaded, frozen, and the captions read by the checkpoint's tokenizer."""
  from configs.flow import tiny
  from mmlearn.pretrained.preprocessing import use_checkpoint_inputs
  from mmlearn.train import setup

  config = tiny.get_config()
  config.dataset.data_dir = retrieval_tiny_data[0]
  config.model.modalities = ml_collections.ConfigDict(
    {"text": loading.tower("clip_text", str(FIXTURES / "clip_a"), freeze=True)}
  )
  use_checkpoint_inputs(config.dataset, str(FIXTURES / "clip_a"), images=False)
  config.dataset.max_tokens = loading.max_text_positions(str(FIXTURES / "clip_a"))
  run = setup.build(config)
  ((tower),) = run.towers
  assert tower.encoder == "clip_text" and tower.freeze
  params = jax.device_get(run.state.params)
  node = params
  for name in tower.path.split("/"):
    node = node[name]
  tensors = checkpoint.read_tensors(FIXTURES / "clip_a")
  np.testing.assert_array_equal(node["text_projection"]["kernel"], tensors["text_projection.weight"].T)
