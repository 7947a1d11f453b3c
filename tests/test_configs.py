"""Every config file resolves, passes the config checks and builds a model that runs on a batch."""

import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from conftest import REPO
from mmlearn import config_checks, data
from mmlearn.models.classifier import build_classifier

# Two examples of each dataset's model inputs, as the pipeline delivers them.
DUMMY_BATCHES = {
  "mmshapes": {
    "image": np.zeros((2, 32, 32, 3), np.float32),
    "text": np.ones((2, 16), np.int32),
    "text_mask": np.ones((2, 16), bool),
  },
  "avmnist": {"image": np.zeros((2, 28, 28, 1), np.float32), "audio": np.zeros((2, 112, 112, 1), np.float32)},
}
NUM_CLASSES = {"mmshapes": 16, "avmnist": 10}

CONFIG_FILES = sorted(
  f
  for f in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
  if not f.endswith("__init__.py")
)


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_all_config_files_are_listed():
  names = {os.path.basename(f) for f in CONFIG_FILES}
  assert {"default.py", "tiny.py", "mmshapes_image_only.py", "mmshapes_text_only.py", "tensor.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda f: os.path.relpath(f, REPO))
def test_config_resolves_and_builds_its_model(path):
  config = load(path)
  config_checks.check(config)
  name = config.dataset.name
  num_classes = NUM_CLASSES[name]
  model = build_classifier(config.model, num_classes=num_classes, vocab_size=data.vocab_size(name))
  batch = DUMMY_BATCHES[name]
  params = model.init(jax.random.PRNGKey(0), batch)
  assert model.apply(params, batch).shape == (2, num_classes)


def test_unimodal_configs_keep_one_modality():
  configs = {os.path.relpath(p, os.path.join(REPO, "configs")): load(p) for p in CONFIG_FILES}
  assert set(configs["mmshapes_image_only.py"].model.modalities) == {"image"}
  assert set(configs["mmshapes_text_only.py"].model.modalities) == {"text"}
  assert set(configs["default.py"].model.modalities) == {"image", "text"}
  assert set(configs["avmnist/image_only.py"].model.modalities) == {"image"}
  assert set(configs["avmnist/audio_only.py"].model.modalities) == {"audio"}


def test_avmnist_base_takes_the_fusion_as_a_variant():
  """`--config=configs/avmnist/base.py:tensor` calls get_config("tensor")."""
  from configs.avmnist import base, tensor

  assert base.get_config("tensor").model.fusion == "tensor"
  assert base.get_config("tensor").to_dict() == tensor.get_config().to_dict()
  assert base.get_config().model.fusion == "concat"
