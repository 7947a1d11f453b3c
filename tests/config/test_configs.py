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
from mmlearn.config import files
from mmlearn.errors import ConfigError
from mmlearn.models.fusion import FUSIONS
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
DUMMY_BATCHES["captioned"] = {  # configs/retrieval/captioned_vit.py: 224 px crops, 32 tokens.
  "image": np.zeros((2, 224, 224, 3), np.float32),
  "text": np.ones((2, 32), np.int32),
  "text_mask": np.ones((2, 32), bool),
  "label": np.zeros(2, np.int32),
}
NUM_CLASSES = {"mmshapes": 16, "avmnist": 10, "captioned": 12}
FEATURES = {"mmshapes": ("shape", "colour", "size", "quadrant"), "avmnist": (), "captioned": ()}
# A folder's vocabulary is built from its captions; a size stands in for it.
VOCAB_SIZES = {"captioned": 500}


def dummy_batch(config):
  """The dataset's dummy batch at the sizes the config reads it: `dataset.image_size` square (grey made RGB
  by three channels' statistics, as the pipeline does) and `dataset.max_tokens` tokens."""
  batch = dict(DUMMY_BATCHES[config.dataset.name])
  size = config.dataset.image_size
  if size:
    channels = 3 if 3 in (len(config.dataset.image_mean), len(config.dataset.image_std)) else None
    batch["image"] = np.zeros((2, size, size, channels or batch["image"].shape[-1]), np.float32)
  if "text" in batch:
    tokens = config.dataset.max_tokens
    batch["text"], batch["text_mask"] = np.ones((2, tokens), np.int32), np.ones((2, tokens), bool)
  return batch


def dataset_info(name):
  """The parts of a DatasetInfo tasks read, without preparing the dataset."""
  features = {"label": tfds.features.ClassLabel(num_classes=NUM_CLASSES[name])}
  features |= {feature: tfds.features.ClassLabel(num_classes=4) for feature in FEATURES[name]}
  return types.SimpleNamespace(features=features)


def module_of(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Every launchable config (a file with get_config), and every variant of the AV-MNIST fusion config.
CONFIG_FILES = sorted(
  os.path.relpath(f, REPO)
  for f in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
  if hasattr(module_of(f), "get_config")
)
AVMNIST_VARIANTS = [
  *(f"configs/avmnist/fusion.py:{name}" for name in FUSIONS.names()),
  "configs/avmnist/fusion.py:image_only",
  "configs/avmnist/fusion.py:audio_only,towers=plain",
  "configs/avmnist/fusion.py:concat,towers=plain",
]
CONFIGS = CONFIG_FILES + AVMNIST_VARIANTS


def load(spec):
  return files.get_config(os.path.join(REPO, spec))


def test_all_config_files_are_listed():
  assert {"configs/default.py", "configs/tiny.py", "configs/avmnist/fusion.py"} <= set(CONFIG_FILES)
  assert "configs/avmnist/base.py" not in CONFIG_FILES  # Helpers for the AV-MNIST configs, not a run.


@pytest.mark.parametrize("spec", CONFIGS)
def test_config_resolves_and_builds_its_model(spec):
  """Traced, not compiled: shapes and dtypes are what a config can get wrong; the tiny configs' own tests
  train their models, so compiling every full-size model here would only add minutes."""
  config = load(spec)
  config_checks.check(config)
  name = config.dataset.name
  vocab_size = VOCAB_SIZES.get(name) or data.vocab_size(name)
  task = TASKS.get(config.task)(config, info=dataset_info(name), vocab_size=vocab_size)
  batch = dummy_batch(config)
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
  configs = {spec.removeprefix("configs/"): load(spec) for spec in CONFIG_FILES}
  retrieval = {name: c for name, c in configs.items() if c.task == "retrieval"}
  assert {"retrieval/mmshapes_clip.py", "retrieval/mmshapes_siglip.py", "retrieval/avmnist_clip.py"} <= set(
    retrieval
  )
  assert all(len(c.model.modalities) == 2 for c in retrieval.values())
  assert retrieval["retrieval/mmshapes_siglip.py"].retrieval.loss == "siglip"
  assert set(retrieval["retrieval/avmnist_clip.py"].model.modalities) == {"image", "audio"}
  assert retrieval["retrieval/avmnist_clip.py"].retrieval.relevance == ("label",)


def test_unimodal_configs_keep_one_modality():
  assert set(load("configs/mmshapes_image_only.py").model.modalities) == {"image"}
  assert set(load("configs/mmshapes_text_only.py").model.modalities) == {"text"}
  assert set(load("configs/default.py").model.modalities) == {"image", "text"}
  assert set(load("configs/avmnist/fusion.py:image_only").model.modalities) == {"image"}
  assert set(load("configs/avmnist/fusion.py:audio_only").model.modalities) == {"audio"}


def test_avmnist_fusion_config_takes_the_fusion_and_towers_as_a_variant():
  """`--config=configs/avmnist/fusion.py:tensor` calls get_config("tensor"); every fusion differs from
  concat only in the fusion."""
  concat = load("configs/avmnist/fusion.py").to_dict()
  assert load("configs/avmnist/fusion.py:concat").to_dict() == concat
  tensor = load("configs/avmnist/fusion.py:tensor").to_dict()
  assert (
    tensor["classification"].pop("fusion") == "tensor" and concat["classification"].pop("fusion") == "concat"
  )
  assert tensor == concat
  with pytest.raises(ConfigError, match="takes FUSION"):
    load("configs/avmnist/fusion.py:concat,width=3")


def test_avmnist_reference_towers_are_multibench_lenets_with_batch_norm():
  """The default towers are MultiBench's (BatchNorm, no centring); `towers=plain` keeps the BatchNorm-free
  ones."""
  from configs.avmnist import fusion

  reference, plain = fusion.get_config(), fusion.get_config("concat,towers=plain")
  for modality in ("image", "audio"):
    assert reference.model.modalities[modality].batch_norm
    assert not reference.model.modalities[modality].get("center_input", False)
    assert not plain.model.modalities[modality].batch_norm
  assert plain.model.modalities.audio.center_input
  assert reference.select_metric == "validation/accuracy"
  with pytest.raises(ValueError, match="towers must be one of"):
    fusion.get_config("concat,towers=batchnorm")
