"""The grain pipeline: batch layout, masks, per-process sharding, determinism and checkpointable state."""

import grain
import numpy as np
import pytest

from mmlearn import data
from mmlearn.data import pipeline


@pytest.fixture(scope="module")
def sources(data_dir):
  return data.load_sources("mmshapes", config="tiny", data_dir=data_dir)[0]


def test_train_batch_layout(sources):
  it = pipeline.train_iterator(sources["train"], batch_size=16, seed=0, max_tokens=12)
  batch = next(it)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["text"].shape == batch["text_mask"].shape == (16, 12)
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  # The mask marks exactly the real tokens: a prefix, with padding (id 0) after it.
  lengths = batch["text_mask"].sum(1)
  for row, n in zip(batch["text"], lengths, strict=True):
    assert (row[:n] != 0).all() and (row[n:] == 0).all()


def test_truncation_keeps_mask_consistent(sources):
  batch = next(pipeline.train_iterator(sources["train"], batch_size=8, seed=0, max_tokens=3))
  assert batch["text_mask"].all() and batch["text"].shape == (8, 3)


def test_process_shards_are_disjoint_and_cover_the_split(sources):
  source = sources["validation"]
  shards = [pipeline.process_shard(source, i, 3) for i in range(3)]
  seen = [
    tuple(np.asarray(shard[j]["tokens"])) + (int(shard[j]["label"]), i, j)
    for i, shard in enumerate(shards)
    for j in range(len(shard))
  ]
  assert sum(len(s) for s in shards) == len(source)
  # Interleaved: process i holds elements i, i+3, ...; together every index exactly once.
  for i, shard in enumerate(shards):
    np.testing.assert_array_equal(shard[1]["image"], source[i + 3]["image"])
  assert len(seen) == len(source)


def test_each_process_feeds_its_own_examples(sources):
  batches = [
    next(
      pipeline.train_iterator(
        sources["train"], batch_size=32, seed=0, max_tokens=16, process_index=i, process_count=2
      )
    )
    for i in range(2)
  ]
  assert all(b["image"].shape[0] == 16 for b in batches)
  assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_shuffle_is_seeded_and_state_restores(sources):
  a = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16)
  b = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16)
  c = pipeline.train_iterator(sources["train"], batch_size=8, seed=2, max_tokens=16)
  first = next(a)
  np.testing.assert_array_equal(first["image"], next(b)["image"])
  assert not np.array_equal(first["image"], next(c)["image"])
  state = a.get_state()
  expected = [next(a)["label"] for _ in range(3)]
  resumed = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(expected), np.stack([next(resumed)["label"] for _ in range(3)]))


@pytest.mark.parametrize("n, batch_size", [(10, 4), (10, 25), (7, 7)])
def test_epoch_shuffle_is_grains_shuffled_repeated_batches(n, batch_size):
  """Batch by batch, the same indices (batches spanning epochs included) as grain's per-example chain."""
  grains = grain.MapDataset.range(n).shuffle(seed=3).repeat().batch(batch_size, drop_remainder=True)
  ours = pipeline.EpochShuffle(n, batch_size, seed=3)
  for k in range(8):
    np.testing.assert_array_equal(ours(k), grains[k])


def test_in_memory_and_streaming_paths_give_the_same_batches_and_resume(sources):
  """A small shard is decoded once into memory; it must yield exactly the streaming path's batches."""
  memory = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16)
  stream = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16, memory_bytes=0)
  for _ in range(len(sources["train"]) // 8 + 2):  # Into the second epoch.
    a, b = next(memory), next(stream)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      assert a[key].dtype == b[key].dtype
  expected = next(stream)["label"]
  resumed = pipeline.train_iterator(sources["train"], batch_size=8, seed=1, max_tokens=16, memory_bytes=0)
  resumed.set_state(memory.get_state())  # The two paths' states are interchangeable.
  np.testing.assert_array_equal(next(resumed)["label"], expected)


def test_epochs_are_reshuffled_and_complete(sources):
  n = len(sources["validation"])
  it = pipeline.train_iterator(sources["validation"], batch_size=n, seed=0, max_tokens=16)
  epoch1, epoch2 = next(it), next(it)
  assert not np.array_equal(epoch1["label"], epoch2["label"])
  np.testing.assert_array_equal(np.sort(epoch1["label"]), np.sort(epoch2["label"]))


def test_eval_batches_visit_every_example_once(sources):
  source = sources["validation"]
  batches = list(pipeline.eval_batches(source, batch_size=48, max_tokens=16))
  weights = np.concatenate([b["weight"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[weights > 0]
  assert weights.sum() == len(source) and len(weights) % 48 == 0
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])
