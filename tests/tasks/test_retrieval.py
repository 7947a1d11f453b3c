"""Retrieval: the mmshapes `retrieval` build, the dual encoder, the task, a tiny run that learns, the CLI."""

import json
import re

import jax
import numpy as np
import pytest

from configs.retrieval import tiny
from conftest import run_python, run_steps
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.config import checks as config_checks
from mmlearn.data import mmshapes, pipeline
from mmlearn.errors import ConfigError
from mmlearn.evaluators import retrieval as retrieval_evaluator
from mmlearn.metrics import retrieval as retrieval_metrics
from mmlearn.models.dual_encoder import DualEncoder
from mmlearn.tasks import TASKS
from mmlearn.train import loop

RULE = "same_shape_colour_size_quadrant"
ATTRIBUTE_WORDS = {  # attribute -> per value, the words that name it
  "shape": mmshapes.SHAPE_WORDS,
  "colour": mmshapes.COLOUR_WORDS,
  "size": mmshapes.SIZE_WORDS,
  "vertical": mmshapes.VERTICAL_WORDS,
  "horizontal": tuple((word,) for word in mmshapes.HORIZONTAL_WORDS),
}


@pytest.fixture(scope="module")
def retrieval_data(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  sources, info = data.load_sources("mmshapes", config="retrieval_tiny", data_dir=directory)
  return directory, sources, info


def tiny_config(data_dir, loss="clip"):
  config = tiny.get_config(loss)
  config.dataset.data_dir = data_dir
  return config


# ---- The mmshapes `retrieval` build ----


def test_retrieval_captions_name_every_attribute_and_images_are_in_colour():
  plain = mmshapes.generate_split(128, 5)
  full = mmshapes.generate_split(128, 5, retrieval=True)
  for key in ("label", "shape", "colour", "size", "quadrant", "position"):  # Same layouts as the plain build.
    np.testing.assert_array_equal(full[key], plain[key])
  assert not full["grayscale"].any() and full["shape_mentioned"].all()
  assert all((image[..., 0] != image[..., 1]).any() for image in full["image"])
  for i, caption in enumerate(full["caption"]):
    words = set(mmshapes.TOKENIZER.words(caption))
    truth = {
      "shape": full["shape"][i],
      "colour": full["colour"][i],
      "size": full["size"][i],
      "vertical": full["quadrant"][i] // 2,
      "horizontal": full["quadrant"][i] % 2,
    }
    for attribute, per_value in ATTRIBUTE_WORDS.items():
      named = [value for value, options in enumerate(per_value) if words & set(options)]
      assert named == [truth[attribute]], (caption, attribute)  # Named, and only the true value.


def test_retrieval_builds_hold_colour_images_and_full_captions(retrieval_data):
  _, sources, info = retrieval_data
  assert {split: len(source) for split, source in sources.items()} == {
    "train": 1024,
    "validation": 256,
    "test": 256,
  }
  examples = [sources["test"][i] for i in range(0, 256, 17)]
  assert not any(ex["grayscale"] for ex in examples) and all(ex["shape_mentioned"] for ex in examples)
  expected = mmshapes.generate_split(256, mmshapes.split_seed(0, "test"), retrieval=True)
  assert [ex["caption"].decode() for ex in examples] == expected["caption"][::17]


# ---- The dual encoder and the task ----

TOWERS = {
  "image": {"encoder": "cnn", "widths": (8,), "dense": 16},
  "text": {"encoder": "lstm", "vocab_size": len(mmshapes.VOCABULARY), "embed_dim": 8, "hidden": 16},
}


def dummy_batch(n=3):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, len(mmshapes.VOCABULARY), (n, 6)).astype(np.int32)
  return {
    "image": rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32),
    "text": tokens,
    "text_mask": np.arange(6)[None, :] < np.array([6, 4, 2][:n])[:, None],
  }


def test_dual_encoder_embeds_each_modality_to_unit_norm():
  model = DualEncoder(TOWERS, embed_dim=12, log_scale_init=2.0, bias_init=-10.0)
  batch = dummy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  assert float(params["log_scale"]) == 2.0 and float(params["bias"]) == -10.0
  embeddings = model.apply({"params": params}, batch)
  assert set(embeddings) == {"image", "text"}
  for embedding in embeddings.values():
    assert embedding.shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
  # A text-only batch (a query) embeds only the text, exactly as in the full batch.
  text_only = model.apply({"params": params}, {"text": batch["text"], "text_mask": batch["text_mask"]})
  assert set(text_only) == {"text"}
  np.testing.assert_allclose(text_only["text"], embeddings["text"], atol=1e-6)
  no_bias = DualEncoder(TOWERS, embed_dim=4, log_scale_init=1.0).init(jax.random.PRNGKey(0), batch)
  assert "bias" not in no_bias["params"]


@pytest.mark.e2e  # Trains 15-20 steps.
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_steps_lower_the_contrastive_loss_on_a_fixed_batch(retrieval_data, loss):
  directory, sources, info = retrieval_data
  config = tiny_config(directory, loss)
  task = TASKS.get("retrieval")(config, info=info, vocab_size=data.vocab_size("mmshapes"))
  batch = next(pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16))
  config.optimizer.update(name="adam", learning_rate=3e-3, warmup_steps=0, schedule="constant")
  tx = optim.make_optimizer(config.optimizer, 100)
  params = task.init(jax.random.PRNGKey(0), batch)
  _, losses = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, params, [batch] * 15)
  assert losses[-1] < 0.5 * losses[0], losses


def test_task_and_config_errors_are_named(retrieval_data):
  directory, _, info = retrieval_data
  config = tiny_config(directory)
  config.model.modalities.audio = {"encoder": "cnn"}
  with pytest.raises(ConfigError, match="exactly two modalities"):
    TASKS.get("retrieval")(config, info=info, vocab_size=60)
  config = tiny_config(directory)
  config.retrieval.relevance = ("shape", "mood")
  with pytest.raises(ConfigError, match=r"feature\(s\) \['mood'\] the dataset lacks"):
    TASKS.get("retrieval")(config, info=info, vocab_size=60)
  config = tiny_config(directory)
  config.retrieval.loss = "triplet9"
  with pytest.raises(ConfigError, match="unknown contrastive loss 'triplet9'"):
    config_checks.check(config)


def test_relevance_keys_pair_or_description(retrieval_data):
  directory, sources, info = retrieval_data
  config = tiny_config(directory)
  task = TASKS.get("retrieval")(config, info=info, vocab_size=60)
  assert retrieval_evaluator.relevance_rule(task.relevance) == RULE
  keys = retrieval_evaluator.relevance_keys(sources["test"], task.relevance)
  attributes = np.array([[sources["test"][i][f] for f in task.relevance] for i in range(256)])
  same = (attributes[:, None, :] == attributes[None, :, :]).all(-1)
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], same)
  assert 1 < len(np.unique(keys)) < 256  # Descriptions repeat: several relevant items per query.
  config.retrieval.relevance = ()
  pair = TASKS.get("retrieval")(config, info=info, vocab_size=60)
  assert retrieval_evaluator.relevance_rule(pair.relevance) == "pair"
  assert task.summary_metric == pair.summary_metric == "pair/image_to_text/R@1"  # The headline is paired.
  np.testing.assert_array_equal(
    retrieval_evaluator.relevance_keys(sources["test"], pair.relevance), np.arange(256)
  )


# ---- A tiny run: it learns, and the CLI searches it ----


@pytest.fixture(scope="module")
def trained_run(retrieval_data, tmp_path_factory):
  directory, _, _ = retrieval_data
  config = tiny_config(directory)
  config.num_train_steps = 120  # 7.5 epochs of 1,024 pairs.
  config.optimizer.warmup_steps = 10
  config.log_every_steps = 40
  config.checkpoint_every_steps = 120
  workdir = tmp_path_factory.mktemp("clip_run")
  return workdir, loop.train_and_evaluate(config, str(workdir))


@pytest.mark.e2e
def test_clip_learns_to_retrieve_far_above_chance(trained_run, retrieval_data):
  workdir, results = trained_run
  directory, sources, info = retrieval_data
  relevance = TASKS.get("retrieval")(tiny_config(directory), info=info, vocab_size=60).relevance
  keys = retrieval_evaluator.relevance_keys(sources["test"], relevance)
  ceiling = retrieval_metrics.pair_ceiling(keys, keys)
  for direction in ("image_to_text", "text_to_image"):
    learned = {k: results[f"test/{RULE}/{direction}/{k}"] for k in ("R@1", "R@10", "median_rank", "mAP")}
    chance = {
      k: results[f"test/{RULE}/random/{direction}/{k}"] for k in ("R@1", "R@10", "median_rank", "mAP")
    }
    # Random embeddings: R@1 ~ 1%, R@10 ~ 10%, median rank ~ 60 (about 2 of 256 items share a description).
    assert chance["R@10"] < 0.2 and chance["median_rank"] > 30, chance
    # Learned after 120 steps (seed 0): R@1 0.10 / 0.055, R@10 0.47 / 0.41, median rank 12 / 15, mAP 0.14.
    assert learned["R@1"] > 0.03 and learned["R@10"] > 3 * chance["R@10"], (learned, chance)
    assert learned["median_rank"] < chance["median_rank"] / 2 and learned["mAP"] > 3 * chance["mAP"]
    # The paired rule is reported beside it and is the stricter one: the paired item is one of the items
    # with its description, so it can only rank lower than the best of them.
    for k in ("R@1", "R@5", "R@10"):
      assert 0 <= results[f"test/pair/{direction}/{k}"] <= results[f"test/{RULE}/{direction}/{k}"]
      assert results[f"test/pair/ceiling/{direction}/{k}"] == pytest.approx(ceiling[k])
    assert results[f"test/pair/random/{direction}/R@10"] < 0.1  # 10 of 256 items: about 4%.
    assert results[f"test/pair/{direction}/R@10"] > 2 * results[f"test/pair/random/{direction}/R@10"]
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last[f"validation/{RULE}/image_to_text/R@5"] == pytest.approx(
    results[f"validation/{RULE}/image_to_text/R@5"]
  )


def retrieve(workdir, *flags):
  return run_python(["scripts/retrieve.py", f"--workdir={workdir}", *flags])


@pytest.mark.e2e
def test_retrieve_prints_the_top_k_and_saves_a_grid(trained_run, tmp_path):
  workdir, _ = trained_run
  grid = tmp_path / "grid.png"
  result = retrieve(workdir, "--query=a large red circle in the top left", "--top_k=4", f"--output={grid}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if re.match(r"\s*\d+\. #\d+", line)]
  assert len(rows) == 4
  scores = [float(re.search(r"score ([-+.\d]+)", row)[1]) for row in rows]
  assert scores == sorted(scores, reverse=True)
  assert all(f"{name}=" in row for row in rows for name in ("shape", "colour", "size", "quadrant"))
  assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 1000


@pytest.mark.e2e
def test_retrieve_rejects_unknown_words_and_runs_without_checkpoints(trained_run, tmp_path):
  workdir, _ = trained_run
  result = retrieve(workdir, "--query=a purple circle")
  assert result.returncode == 1
  assert "error: DataError: unknown word 'purple'" in result.stderr and "Traceback" not in result.stderr
  (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
  result = retrieve(tmp_path, "--query=a red circle")
  assert result.returncode == 1
  assert "holds no checkpoint" in result.stderr and "Traceback" not in result.stderr
