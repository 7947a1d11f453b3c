"""Class imbalance: the long-tailed training subset, its class counts, and class-balanced sampling."""

import numpy as np
import pytest

from mmlearn import data
from mmlearn.data import imbalance, pipeline
from mmlearn.data.pipeline import TrainingData
from mmlearn.errors import ConfigError

NUM_CLASSES = 16  # mmshapes; its tiny train split holds 32 examples of each class.


@pytest.fixture(scope="module")
def sources(data_dir):
  return data.load_sources("mmshapes", config="tiny", data_dir=data_dir)[0]


def balanced_labels(per_class: int, num_classes: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.mark.parametrize("ratio", [10.0, 100.0])
def test_long_tail_counts_follow_the_exponential_profile(ratio):
  labels = balanced_labels(200, 10)
  counts = np.bincount(labels[imbalance.long_tail_indices(labels, ratio, seed=0)], minlength=10)
  np.testing.assert_array_equal(counts, np.rint(200 * ratio ** (-np.arange(10) / 9)))
  assert counts[0] == 200 and counts[0] / counts[-1] == ratio
  assert (np.diff(counts) <= 0).all()


def test_long_tail_head_is_the_rarest_class_count_so_every_class_can_fill_its_quota():
  labels = np.repeat(np.arange(4), [50, 80, 60, 70])
  counts = np.bincount(labels[imbalance.long_tail_indices(labels, 4.0, seed=0)], minlength=4)
  np.testing.assert_array_equal(counts, np.rint(50 * 4.0 ** (-np.arange(4) / 3)))
  assert abs(counts[0] / 4.0 - counts[-1]) <= 0.5  # The ratio, up to rounding the tail.


def test_long_tail_indices_are_seeded_sorted_and_ratio_one_is_everything():
  labels = balanced_labels(50, 8)
  a = imbalance.long_tail_indices(labels, 10.0, seed=3)
  np.testing.assert_array_equal(a, imbalance.long_tail_indices(labels, 10.0, seed=3))
  assert not np.array_equal(a, imbalance.long_tail_indices(labels, 10.0, seed=4))
  assert (np.diff(a) > 0).all()
  np.testing.assert_array_equal(imbalance.long_tail_indices(labels, 1.0, seed=3), np.arange(len(labels)))


def test_read_labels_matches_decoding_and_is_cached(sources):
  source = sources["train"]
  labels = imbalance.read_labels(source)
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])
  assert imbalance.read_labels(source) is labels
  # Any random-access source with a `label` works (here, one without the TFDS raw records).
  examples = [{"label": np.int64(c)} for c in (2, 0, 1)]
  np.testing.assert_array_equal(imbalance.read_labels(examples), [2, 0, 1])


def test_class_counts_are_those_of_the_training_subset(sources):
  source = sources["train"]
  full = imbalance.class_counts(source, NUM_CLASSES)
  np.testing.assert_array_equal(full, np.full(NUM_CLASSES, 32))
  counts = data.class_counts(source, NUM_CLASSES, imbalance_ratio=8.0, imbalance_seed=1)
  assert counts.shape == (NUM_CLASSES,) and counts[0] == 32 and counts[-1] == 4
  # One epoch of the training iterator is exactly the subset those counts describe.
  epoch = next(
    pipeline.train_iterator(
      source,
      batch_size=int(counts.sum()),
      seed=0,
      max_tokens=16,
      training=TrainingData(imbalance_ratio=8.0, imbalance_seed=1),
    )
  )
  np.testing.assert_array_equal(np.bincount(epoch["label"], minlength=NUM_CLASSES), counts)


def test_processes_share_out_the_same_subset(sources):
  source = sources["train"]
  subset = imbalance.long_tail_indices(imbalance.read_labels(source), 8.0, seed=0, num_classes=NUM_CLASSES)
  expected = {source[int(i)]["image"].tobytes() for i in subset}
  seen = []
  for process in range(2):
    it = pipeline.train_iterator(
      source,
      batch_size=16,
      seed=0,
      max_tokens=16,
      training=TrainingData(imbalance_ratio=8.0),
      process_index=process,
      process_count=2,
    )
    # 8 a batch: the first ceil(share / 8) batches cover at least one whole epoch of the share.
    batches = [next(it)["image"] for _ in range(-(-len(subset) // 16) + 1)]
    uint8 = np.rint((np.concatenate(batches) + 1.0) * 127.5).astype(np.uint8)
    seen.append({image.tobytes() for image in uint8})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == expected


def test_evaluation_splits_are_untouched(sources):
  # The trainer subsets only the training source; evaluation reads every example of its split.
  for split in ("validation", "test"):
    source = sources[split]
    batches = list(pipeline.eval_batches(source, batch_size=64, max_tokens=16))
    weights = np.concatenate([b["weight"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[weights > 0]
    np.testing.assert_array_equal(labels, imbalance.read_labels(source))


def test_class_balanced_sampling_is_uniform_over_classes_on_a_long_tail(sources):
  kwargs = dict(batch_size=64, seed=0, max_tokens=16)
  balanced = pipeline.train_iterator(
    sources["train"], training=TrainingData(imbalance_ratio=8.0, sampler="class_balanced"), **kwargs
  )
  uniform = pipeline.train_iterator(sources["train"], training=TrainingData(imbalance_ratio=8.0), **kwargs)
  freq = np.bincount(np.concatenate([next(balanced)["label"] for _ in range(50)]), minlength=NUM_CLASSES)
  assert freq.min() > 140 and freq.max() < 260  # 200 expected each, standard deviation ~14.
  natural = np.bincount(np.concatenate([next(uniform)["label"] for _ in range(50)]), minlength=NUM_CLASSES)
  assert natural[0] > 5 * natural[-1]  # Shuffled epochs keep the long tail (32 : 4).


def test_class_balanced_stream_is_seeded_and_restores_exactly(sources):
  def make(seed=0):
    return pipeline.train_iterator(
      sources["train"],
      batch_size=8,
      seed=seed,
      max_tokens=16,
      training=TrainingData(imbalance_ratio=8.0, sampler="class_balanced"),
    )

  a = make()
  first = next(a)
  np.testing.assert_array_equal(first["image"], next(make())["image"])
  assert not np.array_equal(first["image"], next(make(seed=1))["image"])
  next(a)
  state = a.get_state()
  expected = [next(a) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_class_balanced_processes_draw_different_examples(sources):
  batches = [
    next(
      pipeline.train_iterator(
        sources["train"], batch_size=32, seed=0, max_tokens=16,
        training=TrainingData(sampler="class_balanced"), process_index=i, process_count=2,
      )
    )
    for i in range(2)
  ]  # fmt: skip
  assert not np.array_equal(batches[0]["label"], batches[1]["label"])


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1"),
    ({"sampler": "oversample"}, "unknown classification.sampler"),
  ],
)
def test_bad_options_fail_with_one_line(sources, kwargs, message):
  with pytest.raises(ConfigError, match=message):
    pipeline.train_iterator(
      sources["train"], batch_size=8, seed=0, max_tokens=16, training=TrainingData(**kwargs)
    )
