"""Spoken digit <-> image retrieval end to end on the AV-MNIST `tiny` build (from the real raw files)."""

import math

import numpy as np

from configs.retrieval import avmnist_clip
from mmlearn import data
from mmlearn.evaluators import retrieval as retrieval_evaluator
from mmlearn.tasks import TASKS
from mmlearn.train import loop


def test_avmnist_retrieval_trains_and_ranks_by_digit(avmnist_data_dir, tmp_path):
  config = avmnist_clip.get_config()
  config.dataset.update(config="tiny", data_dir=avmnist_data_dir, eval_splits=("test",))
  config.update(
    batch_size=32, eval_batch_size=64, num_train_steps=3, log_every_steps=3, checkpoint_every_steps=3
  )
  config.optimizer.warmup_steps = 1
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  for prefix in ("test/pair", "test/pair/random", "test/same_label", "test/same_label/random"):
    for direction in ("audio_to_image", "image_to_audio"):
      metrics = {
        k: results[f"{prefix}/{direction}/{k}"] for k in ("R@1", "R@5", "R@10", "median_rank", "mAP")
      }
      assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 1, metrics
      assert 1 <= metrics["median_rank"] <= 320 and 0 < metrics["mAP"] <= 1 and math.isfinite(metrics["mAP"])
  # Relevance is the digit: the keys group exactly the examples that share a label.
  sources, info = data.load_sources("avmnist", config="tiny", data_dir=avmnist_data_dir, splits=("test",))
  task = TASKS.get("retrieval")(config, info=info, vocab_size=None)
  keys = retrieval_evaluator.relevance_keys(sources["test"], task.relevance)
  labels = np.array([sources["test"][i]["label"] for i in range(len(sources["test"]))])
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], labels[:, None] == labels[None, :])
