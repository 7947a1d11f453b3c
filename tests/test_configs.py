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

CONFIG_FILES = sorted(
  f for f in glob.glob(os.path.join(REPO, "configs", "*.py")) if not f.endswith("__init__.py")
)


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_all_config_files_are_listed():
  names = {os.path.basename(f) for f in CONFIG_FILES}
  assert {"default.py", "tiny.py", "mmshapes_image_only.py", "mmshapes_text_only.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_resolves_and_builds_its_model(path):
  config = load(path)
  config_checks.check(config)
  model = build_classifier(config.model, num_classes=16, vocab_size=data.vocab_size(config.dataset.name))
  batch = {
    "image": np.zeros((2, 32, 32, 3), np.float32),
    "text": np.ones((2, 16), np.int32),
    "text_mask": np.ones((2, 16), bool),
  }
  params = model.init(jax.random.PRNGKey(0), batch)
  assert model.apply(params, batch).shape == (2, 16)


def test_unimodal_configs_keep_one_modality():
  configs = {os.path.basename(p): load(p) for p in CONFIG_FILES}
  assert set(configs["mmshapes_image_only.py"].model.modalities) == {"image"}
  assert set(configs["mmshapes_text_only.py"].model.modalities) == {"text"}
  assert set(configs["default.py"].model.modalities) == {"image", "text"}
