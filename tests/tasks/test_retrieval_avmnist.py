"""Spoken digit <-> image retrieval on the AV-MNIST `tiny` build (from the real raw files): its relevance
rule and its ranking, without training (the learning itself is tested on mmshapes, test_retrieval.py)."""

import jax
import numpy as np
import pytest

from configs.retrieval import avmnist_clip
from mmlearn import data
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.evaluators import retrieval as retrieval_evaluator
from mmlearn.tasks import TASKS


@pytest.fixture(scope="module")
def test_split(avmnist_data_dir):
  config = avmnist_clip.get_config()
  config.dataset.update(config="tiny", data_dir=avmnist_data_dir)
  sources, info = data.load_sources("avmnist", config="tiny", data_dir=avmnist_data_dir, splits=("test",))
  return config, sources["test"], TASKS.get("retrieval")(config, info=info, vocab_size=None)


def test_relevance_is_the_digit(test_split):
  """The `same_label` rule groups exactly the examples that share a label: no training needed."""
  _, source, task = test_split
  keys = retrieval_evaluator.relevance_keys(source, task.relevance)
  labels = np.array([source[i]["label"] for i in range(len(source))])
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], labels[:, None] == labels[None, :])


def test_spoken_digits_and_images_are_ranked_both_ways_under_both_rules(test_split):
  """The evaluator on the AV-MNIST towers (untrained: ranking does not need a good model): every rule and
  direction, and a digit-level rule that is at least as lenient as the paired one."""
  config, source, task = test_split
  variables = task.init(
    jax.random.PRNGKey(0), next(pipeline.eval_batches(source, batch_size=2, max_tokens=16))
  )
  evaluator = retrieval_evaluator.for_task(
    task, parallel_lib.DataParallel("shard_map"), source, split="test", batch_size=64, max_tokens=16
  )
  results = dict(evaluator.run(variables))
  for direction in ("audio_to_image", "image_to_audio"):
    for prefix in ("test/pair", "test/pair/random", "test/same_label", "test/same_label/random"):
      metrics = {
        k: results[f"{prefix}/{direction}/{k}"] for k in ("R@1", "R@5", "R@10", "median_rank", "mAP")
      }
      assert metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"], metrics
      assert 1 <= metrics["median_rank"] <= len(source) and 0 < metrics["mAP"] <= 1
    for k in ("R@1", "R@5", "R@10"):
      assert results[f"test/same_label/{direction}/{k}"] >= results[f"test/pair/{direction}/{k}"]
