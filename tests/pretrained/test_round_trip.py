"""The round trip on data of our own: pretrain a CLIP-architecture dual encoder on mmshapes, export it as a
Hugging Face checkpoint, and start other runs from it: frozen under a fusion head on AV-MNIST, and
evaluated zero-shot and by a linear probe."""

import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from mmlearn.config import files
from mmlearn.pretrained import checkpoint, export
from mmlearn.runs import restore
from mmlearn.train import loop

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "pretrained"
ARCHITECTURE = FIXTURES / "clip_a"  # Only its config.json, tokenizer and processor: weights are seeded.
CHANCE = 1 / 16  # mmshapes' 16 labels (shape x colour).


def config_of(spec, **dataset):
  config = files.get_config(spec)
  config.unlock()
  config.dataset.update(**dataset)
  config.select_metric = ""
  return config


def layout(directory):
  return {k: (v.shape, v.dtype) for k, v in checkpoint.read_tensors(directory).items()}


@pytest.mark.e2e
def test_pretrain_export_and_reuse(tmp_path, retrieval_tiny_data, avmnist_data_dir):
  mmshapes = {"config": "retrieval_tiny", "data_dir": retrieval_tiny_data[0]}
  pretrain = config_of(f"configs/pretrained/retrieval.py:ckpt={ARCHITECTURE},mode=scratch", **mmshapes)
  pretrain.update(num_train_steps=300, eval_every_steps=0)
  pretrain.dataset.eval_splits = ("test",)
  pretrain.optimizer.warmup_steps = 20
  loop.train_and_evaluate(pretrain, str(tmp_path / "pretrain"))

  exported = export.export_run(str(tmp_path / "pretrain"), str(tmp_path / "export"))
  assert layout(exported) == layout(ARCHITECTURE)  # Names, shapes and dtypes of the reference's file.
  _, _, _, trained = restore.load_run(
    restore.read_config(str(tmp_path / "pretrain")), str(tmp_path / "pretrain"), ()
  )
  reread = config_of(f"configs/pretrained/retrieval.py:ckpt={exported},mode=frozen", **mmshapes)
  reread.num_train_steps = 1
  reread.optimizer.frozen = "log_scale"  # With the frozen towers: nothing trains, the evaluators read it.
  reread.evals = ml_collections.ConfigDict(
    {
      "zero_shot": {"type": "zero_shot", "split": "test", "templates": ("a {}", "there is a {}")},
      "probe": {"type": "linear_probe", "split": "test"},
    }
  )
  results = loop.train_and_evaluate(reread, str(tmp_path / "reread"))
  _, _, _, loaded = restore.load_run(
    restore.read_config(str(tmp_path / "reread")), str(tmp_path / "reread"), ()
  )
  # Export then import is bitwise: the towers and the logit scale come back exactly as trained.
  for name in ("image_encoder", "text_encoder", "log_scale"):
    jax.tree.map(np.testing.assert_array_equal, loaded["params"][name], trained["params"][name])
  assert results["test/zero_shot/top1"] > 2 * CHANCE, results
  assert results["test/linear_probe/top1"] > 4 * CHANCE, results

  fusion = config_of(
    f"configs/pretrained/fusion.py:ckpt={exported}", config="tiny", data_dir=avmnist_data_dir
  )
  fusion.update(num_epochs=5.0, eval_every_steps=0)
  results = loop.train_and_evaluate(fusion, str(tmp_path / "fusion"))
  _, _, _, fused = restore.load_run(
    restore.read_config(str(tmp_path / "fusion")), str(tmp_path / "fusion"), ()
  )
  jax.tree.map(
    np.testing.assert_array_equal, fused["params"]["image_encoder"], trained["params"]["image_encoder"]
  )
  assert results["test/accuracy"] > 0.15, results  # Ten digits: chance is 0.1.
