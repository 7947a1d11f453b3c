"""Class imbalance: a long-tailed subset of a training split, its class counts, and class-balanced batches.

Long-tailed benchmarks (CIFAR-LT and the like) are made from balanced datasets by keeping, for class
`c` of `C`, `n_c = round(n_head * ratio ** (-c / (C - 1)))` examples: an exponential profile from the
head (class 0) to the tail (class C-1), with `n_0 / n_{C-1} == ratio` up to rounding. Classes are
ordered by label id. `n_head` is the count of the split's *least* frequent class, not its most frequent
one: every class then has at least `n_c` examples to keep, so the profile (and the ratio) holds exactly
on datasets that are only roughly balanced (AV-MNIST's digits range from 4,963 to 6,212), instead of
being clipped by whichever head classes happen to be short. Only the training split is subsetted;
evaluating on the untouched validation and test splits is the point of the benchmark.

Labels are read from the stored records without decoding the rest of the example (for TFDS sources):
for AV-MNIST's 55,000 training records that takes ~2.3 s on 2 cores (up to 3.5 s while they are busy),
2.1 s of it reading the bytes (a record is one blob), against ~4.6 s for decoding every example. They
are cached per source object, so the trainer's `class_counts` and the pipeline's subset read them once.
"""

import contextlib
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mmlearn.errors import ConfigError, DataError

if TYPE_CHECKING:  # The pipeline imports this module.
  from mmlearn.data.pipeline import Source

SAMPLERS = ("uniform", "class_balanced")
_SAMPLER_STREAM = 0x5A3  # Separates the sampler's random stream from others drawn from the same seed.
_READ_CHUNK = 4096  # Records read at once.
_labels_cache: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def check(ratio: float, sampler: str) -> None:
  """`ConfigError`s for impossible settings (the classification task's checks and the pipeline call this)."""
  if not ratio >= 1:
    raise ConfigError(f"classification.imbalance_ratio must be >= 1 (1 = off), got {ratio}")
  if sampler not in SAMPLERS:
    raise ConfigError(f"unknown classification.sampler {sampler!r}; known: {', '.join(SAMPLERS)}")


def long_tail_counts(counts: np.ndarray, ratio: float) -> np.ndarray:
  """Examples to keep per class: `round(min(counts) * ratio ** (-c / (C - 1)))`, at least 1 per class.

  A class with no examples at all keeps none and is left out of `min(counts)`.
  """
  counts = np.asarray(counts)
  present = counts > 0
  if ratio == 1 or len(counts) < 2:
    return counts.copy()
  n_head = counts[present].min()
  profile = n_head * float(ratio) ** (-np.arange(len(counts)) / (len(counts) - 1))
  return np.where(present, np.maximum(np.rint(profile), 1), 0).astype(np.int64)


def long_tail_indices(
  labels: np.ndarray, ratio: float, seed: int, num_classes: int | None = None
) -> np.ndarray:
  """Sorted indices of a seeded long-tailed subset of `labels` (all of them when `ratio` is 1).

  Each class keeps a uniformly random subset of its examples, of the size `long_tail_counts` gives;
  the same labels, ratio and seed always give the same indices.
  """
  labels = np.asarray(labels)
  if ratio == 1:
    return np.arange(len(labels))
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  keep = long_tail_counts(np.bincount(labels, minlength=num_classes), ratio)
  rng = np.random.default_rng(seed % 2**32)
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(keep)]
  return np.sort(np.concatenate(chosen))


def read_labels(source: "Source") -> np.ndarray:
  """The `label` of every record of a random-access source, as int64 (cached per source object).

  A TFDS source is read as raw records and only the label is taken out of each `tf.train.Example`;
  any other source is indexed example by example.
  """
  key = id(source)
  if key in _labels_cache and _labels_cache[key][0]() is source:
    return _labels_cache[key][1]
  if _is_tfds_example_source(source):
    labels = _read_tfds_labels(source)
  else:
    labels = np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)
  labels.flags.writeable = False  # Shared through the cache.
  with contextlib.suppress(TypeError):  # Sources without weak references (plain lists) are not cached.
    _labels_cache[key] = (weakref.ref(source, lambda _, key=key: _labels_cache.pop(key, None)), labels)
  return labels


def _is_tfds_example_source(source: Any) -> bool:
  """A TFDS data source: raw records in `data_source`, each a `tf.train.Example` with an int64 `label`."""
  return hasattr(source, "data_source") and hasattr(source, "dataset_info") and len(source) > 0


def _read_tfds_labels(source: Any) -> np.ndarray:
  from tensorflow_datasets.core.example_parser import tf_example_pb2  # The proto TFDS itself parses with.

  parse = tf_example_pb2.Example.FromString
  n = len(source)
  labels = np.empty(n, np.int64)
  for start in range(0, n, _READ_CHUNK):
    records = source.data_source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
    labels[start : start + len(records)] = [
      parse(r).features.feature["label"].int64_list.value[0] for r in records
    ]
  # The label's stored int64 is its decoded value for ClassLabel; check once rather than trust it blindly.
  if labels[0] != int(source[0]["label"]):
    raise DataError(f"the stored labels of {source!r} do not decode to themselves; cannot read them raw")
  return labels


def num_classes_of(source: Any, labels: np.ndarray) -> int:
  """The label feature's number of classes where the source says (TFDS), else the largest label + 1."""
  try:
    return int(source.dataset_info.features["label"].num_classes)
  except (AttributeError, KeyError, TypeError):
    return int(labels.max()) + 1 if len(labels) else 0


def training_indices(source: "Source", ratio: float, seed: int) -> np.ndarray:
  """The indices of `source` that training uses: the long-tailed subset, or all of them if `ratio` is 1."""
  if ratio == 1:
    return np.arange(len(source))
  labels = read_labels(source)
  return long_tail_indices(labels, ratio, seed, num_classes_of(source, labels))


def class_counts(
  source: "Source", num_classes: int, *, imbalance_ratio: float = 1.0, imbalance_seed: int = 0
) -> np.ndarray:
  """Examples per class, int64 [num_classes], of the training set the pipeline draws from.

  That is the long-tailed subset when `imbalance_ratio` > 1 (pass the config's ratio and seed), counted
  over the whole split, not one process's share: the class prior that losses such as logit adjustment
  or class-balanced reweighting need. Its sum is the number of training examples (an epoch).
  """
  labels = read_labels(source)[training_indices(source, imbalance_ratio, imbalance_seed)]
  return np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.int64)


class Subset:
  """The records `indices` of a random-access source, as a random-access source."""

  def __init__(self, source: "Source", indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> Mapping[str, Any]:
    return self.source[int(self.indices[i])]


class ClassBalancedSampler:
  """Batch `k`'s indices into a dataset with `labels`: a uniformly random class, then a random example of it.

  Each class present in `labels` is equally likely in every draw (draws are with replacement, so there
  are no epochs). The draws are a function of (seed, stream, k) only, so an iterator restored at batch
  `k` continues the same stream; `stream` (the process index) gives each process its own draws.
  """

  def __init__(self, labels: np.ndarray, batch_size: int, seed: int, stream: int = 0):
    labels = np.asarray(labels)
    self.order = np.argsort(labels, kind="stable")  # Example indices grouped by class.
    classes, self.starts, self.sizes = np.unique(labels[self.order], return_index=True, return_counts=True)
    if not len(classes):
      raise DataError("class-balanced sampling needs at least one example")
    self.batch_size, self.seed, self.stream = batch_size, seed % 2**32, stream

  def __call__(self, k: int) -> np.ndarray:
    rng = np.random.default_rng([_SAMPLER_STREAM, self.seed, self.stream, k])
    c = rng.integers(len(self.sizes), size=self.batch_size)
    within = (rng.random(self.batch_size) * self.sizes[c]).astype(np.int64)
    return self.order[self.starts[c] + np.minimum(within, self.sizes[c] - 1)]
