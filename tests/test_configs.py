"""Every config file resolves, passes the config checks and builds its task's model, whose loss runs."""

import glob
import importlib.util
import os
import types

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REPO
from mmlearn import data
from mmlearn import parallel as parallel_lib
from mmlearn.config import checks as config_checks
from mmlearn.tasks import TASKS

# Two examples of each dataset's model inputs and features, as the pipeline delivers them.
DUMMY_BATCHES = {
  "mmshapes": {
    "image": np.zeros((2, 32, 32, 3), np.float32),
    "text": np.ones((2, 16), np.int32),
    "text_mask": np.ones((2, 16), bool),
    "label": np.zeros(2, np.int32),
  },
  "avmnist": {
    "image": np.zeros((2, 28, 28, 1), np.float32),
    "audio": np.zeros((2, 112, 112, 1), np.float32),
    "label": np.zeros(2, np.int32),
  },
}
NUM_CLASSES = {"mmshapes": 16, "avmnist": 10}
FEATURES = {"mmshapes": ("shape", "colour", "size", "quadrant"), "avmnist": ()}


def dataset_info(name):
  """The parts of a DatasetInfo tasks read, without preparing the dataset."""
  features = {"label": tfds.features.ClassLabel(num_classes=NUM_CLASSES[name])}
  features |= {feature: tfds.features.ClassLabel(num_classes=4) for feature in FEATURES[name]}
  return types.SimpleNamespace(features=features)


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
  """Traced, not compiled: shapes and dtypes are what a config can get wrong; the tiny configs' own tests
  train their models, so compiling every full-size model here would only add minutes."""
  config = load(path)
  config_checks.check(config)
  name = config.dataset.name
  task = TASKS.get(config.task)(config, info=dataset_info(name), vocab_size=data.vocab_size(name))
  batch = DUMMY_BATCHES[name]
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
  assert jax.tree.leaves(params) and all(
    leaf.dtype == np.float32 for leaf in jax.tree.leaves(params["params"])
  )
  # The per-device loss, on one "device" of a named axis (it may all-gather over it).
  loss_fn = jax.vmap(
    lambda p, b: task.loss(p, b, jax.random.PRNGKey(1))[0], (None, 0), axis_name=parallel_lib.AXIS
  )
  loss = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[None], batch))
  assert loss.shape == (1,) and loss.dtype == np.float32


def test_retrieval_configs_pair_two_modalities_with_each_loss():
  configs = {os.path.relpath(p, os.path.join(REPO, "configs")): load(p) for p in CONFIG_FILES}
  retrieval = {name: c for name, c in configs.items() if c.task == "retrieval"}
  assert {"retrieval/mmshapes_clip.py", "retrieval/mmshapes_siglip.py", "retrieval/avmnist_clip.py"} <= set(
    retrieval
  )
  assert all(len(c.model.modalities) == 2 for c in retrieval.values())
  assert retrieval["retrieval/mmshapes_siglip.py"].retrieval.loss == "siglip"
  assert set(retrieval["retrieval/avmnist_clip.py"].model.modalities) == {"image", "audio"}
  assert retrieval["retrieval/avmnist_clip.py"].retrieval.relevance == ("label",)


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


def test_avmnist_reference_towers_are_multibench_lenets_with_batch_norm():
  """The default towers are MultiBench's (BatchNorm, no centring); `:plain` keeps the BatchNorm-free ones."""
  from configs.avmnist import concat

  reference, plain = concat.get_config(), concat.get_config("plain")
  for modality in ("image", "audio"):
    assert reference.model.modalities[modality].batch_norm
    assert not reference.model.modalities[modality].get("center_input", False)
    assert not plain.model.modalities[modality].get("batch_norm", False)
  assert plain.model.modalities.audio.center_input
  assert reference.select_metric == "validation/accuracy"
  with pytest.raises(ValueError, match="towers must be one of"):
    concat.get_config("batchnorm")
