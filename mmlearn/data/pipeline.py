"""grain input pipelines: random-access source -> process shard -> seeded shuffle -> decode -> batches.

Training iterators are checkpointable (`get_state`/`set_state`, saved with the train state), and
reproducible: the same seed gives the same batches in the same order, across restarts. Evaluation walks
a split once, in order, padding the last batch with zero-weight examples so every example counts once.

Training batches are built a batch at a time, not an example at a time, because on a CPU the input
pipeline shares the cores with the train step: grain's per-example shuffle and decode cost about
50 us and 200-300 us of host time per example, as much as a small model's step. So the order comes
from one permutation per epoch (`EpochShuffle`, grain's own shuffle, the same batches as
`shuffle(seed).repeat().batch()`), and a process's share of a split that is small enough is decoded
once into memory (`DecodedArrays`) and gathered by index; a larger one is decoded batch by batch.

A task sets how its training split is read (`TrainingData`, the task contract's data hook); every
option is off by default, and then the batches are exactly those without it: a long-tailed subset of
the training split (`imbalance`), chosen before process sharding so the processes share out the same
subset; class-balanced instead of shuffled batches; and changes to whole training batches
(augmentation, missing modalities), seeded by batch number like everything else.
"""

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import grain
import jax
import numpy as np
from absl import flags

from mmlearn.data import imbalance
from mmlearn.data.augment import Augment  # noqa: F401  (re-exported: `pipeline.Augment`)
from mmlearn.data.preprocess import (
  ARRAY_FEATURES,
  ExampleView,
  Tokenizer,
  caption_text,
  normalisation,
  normalise_batch,
)
from mmlearn.data.progress import Progress
from mmlearn.errors import ConfigError

# Features the pipeline turns into model inputs; everything else (attributes, captions) is dropped.
TOKEN_FEATURES = {"tokens": "text"}  # feature name -> modality name (padded, with a `<modality>_mask`).
# A training shard whose decoded model inputs take at most this many bytes is decoded once, into memory.
MEMORY_BYTES = 256 << 20
CROP_STREAM = (
  0xC207  # Random-resized crops' random stream, apart from the batch transforms' (`BatchTransform`).
)


# A change to evaluation batches given their examples' positions in the split (missing modalities, noise):
# what it draws per example depends on the example, not on the batching.
EvalTransform = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


class Source(Protocol):
  """A random-access split: `len` and `source[i]` -> the example's features (TFDS data sources, subsets)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int, /) -> Mapping[str, Any]: ...


class BatchTransform(Protocol):
  """A seeded change to whole training batches (augmentation, missing modalities).

  The pipeline calls it on batch `k` with a generator seeded by (`stream`, seed, process, k), so the
  stream it draws is a function of the batch number, which is all the iterator's state holds.
  """

  stream: ClassVar[int]  # Keeps transforms' random streams apart (and apart from the sampler's).

  @property
  def active(self) -> bool:
    """False: the pipeline skips it, so a transform that is off costs nothing and changes nothing."""
    ...

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """How a task reads its training split (the task contract's data hook, `Task.training_data`).

  A long-tailed subset (`imbalance_ratio` > 1, seeded by `imbalance_seed`; `mmlearn.data.imbalance`);
  `sampler="class_balanced"` draws every class equally often instead of walking shuffled epochs;
  `transforms` change whole training batches (missing modalities), after the run's augmentation.
  """

  imbalance_ratio: float = 1.0
  imbalance_seed: int = 0
  sampler: str = "uniform"
  transforms: tuple[BatchTransform, ...] = ()

  def indices(self, source: Source) -> np.ndarray:
    """The examples of `source` an epoch walks: the long-tailed subset, or all of them."""
    return imbalance.training_indices(source, self.imbalance_ratio, self.imbalance_seed)


class DecodeExample(grain.transforms.Map):
  """Keeps model inputs and the label (if the dataset has one: tasks such as retrieval need none); pads or
  truncates token sequences to `max_tokens` with a mask."""

  def __init__(self, max_tokens: int):
    self.max_tokens = max_tokens

  def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray | np.generic]:
    out: dict[str, np.ndarray | np.generic] = (
      {"label": np.int32(example["label"])} if "label" in example else {}
    )
    for name in ARRAY_FEATURES:
      if name in example:
        out[name] = np.asarray(example[name])
    for name, modality in TOKEN_FEATURES.items():
      if name in example:
        tokens = np.asarray(example[name], np.int32)[: self.max_tokens]
        padded = np.zeros(self.max_tokens, np.int32)
        padded[: len(tokens)] = tokens
        out[modality] = padded
        out[f"{modality}_mask"] = np.arange(self.max_tokens) < len(tokens)
    return out


try:  # grain's shared-memory array: a batch built in it crosses to the trainer without being copied.
  from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
except ImportError:  # Another grain version: batches are copied into shared memory by grain instead.
  SharedMemoryArray = None
_IN_WORKER = False  # True in grain's worker processes (`mp_prefetch`), where batches go to shared memory.


def _mark_worker(index: int, count: int) -> None:
  global _IN_WORKER
  del index, count
  _IN_WORKER = True


def _empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
  """Where a batch's largest arrays are written: shared memory in a worker process (grain hands the
  array's name to the trainer, which maps it: the 38 MB of a batch of 64 float32 224 px images are not
  copied once more), else ordinary memory."""
  if _IN_WORKER and SharedMemoryArray is not None:
    return SharedMemoryArray(shape, dtype)
  return np.empty(shape, dtype)


def _owned(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch in this process's memory: a shared-memory array is freed when its last reference goes,
  and JAX on a CPU keeps a reference to an array it was given (it does not copy), for as long as the
  batch lives on the device: the shared memory would outlive the step."""
  return {
    k: np.array(v) if SharedMemoryArray is not None and isinstance(v, SharedMemoryArray) else v
    for k, v in batch.items()
  }


def _unshared(array: np.ndarray) -> np.ndarray:
  """A plain array for one a transform derived from a shared one (the subclass, without the memory)."""
  if (
    SharedMemoryArray is not None
    and isinstance(array, SharedMemoryArray)
    and getattr(array, "shm", None) is None
  ):
    return array.view(np.ndarray)
  return array


class EpochShuffle:
  """Batch `k` of the indices `grain.MapDataset.range(n).shuffle(seed).repeat().batch(batch_size)` yields.

  Grain shuffles epoch `e` with seed `seed + e`; this draws each epoch's whole permutation at once and
  slices batches from it (a batch may span two epochs), instead of one grain call per example.
  """

  def __init__(self, n: int, batch_size: int, seed: int):
    self.n, self.batch_size, self.seed = n, batch_size, seed
    self.epochs: dict[int, np.ndarray] = {}

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self.epochs:
      shuffled = grain.MapDataset.range(self.n).shuffle(seed=(self.seed + epoch) % 2**32)
      self.epochs = {e: p for e, p in self.epochs.items() if e == epoch - 1}  # A batch spans <= 2 epochs.
      self.epochs[epoch] = np.asarray(shuffled.batch(self.n)[0])
    return self.epochs[epoch]

  def __call__(self, k: int) -> np.ndarray:
    epochs, positions = np.divmod(np.arange(k * self.batch_size, (k + 1) * self.batch_size), self.n)
    return np.concatenate([self.permutation(e)[positions[epochs == e]] for e in np.unique(epochs)])


def stack_examples(examples: Sequence[Mapping[str, np.ndarray | np.generic]]) -> dict[str, np.ndarray]:
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [N, max_tokens], mask bool [N, max_tokens]) of `texts`, as the pipeline reads captions:
  `tokenizer`'s ids (`ExampleView`), cut or padded to `max_tokens` with a mask (`DecodeExample`)."""
  decode, modality = DecodeExample(max_tokens), TOKEN_FEATURES["tokens"]
  rows = [decode.map({"tokens": tokenizer.encode(caption_text(text))}) for text in texts]
  return np.stack([row[modality] for row in rows]), np.stack([row[f"{modality}_mask"] for row in rows])


def batch_of(source: Source, indices: Sequence[int] | np.ndarray, max_tokens: int) -> dict[str, np.ndarray]:
  """Model inputs of the examples at `indices`, as an evaluation batch has them (no weights)."""
  decode = DecodeExample(max_tokens)
  return normalise_batch(
    stack_examples([decode.map(source[int(i)]) for i in indices]), *normalisation(source)
  )


class DecodedArrays:
  """A dataset of fixed-shape examples decoded once into one stacked array per feature."""

  def __init__(self, dataset: grain.MapDataset):
    first = dataset[0]
    self.arrays = {k: np.empty((len(dataset), *np.shape(v)), np.asarray(v).dtype) for k, v in first.items()}
    progress = Progress("decoding the training split into memory", len(dataset), unit="examples")
    for i in range(len(dataset)):
      for k, v in (first if i == 0 else dataset[i]).items():
        self.arrays[k][i] = v
      progress.update()
    progress.finish()

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


def decoded_bytes(dataset: grain.MapDataset) -> int:
  """Bytes the decoded dataset would take in memory (every example has the first one's shapes)."""
  return len(dataset) * sum(np.asarray(v).nbytes for v in dataset[0].values()) if len(dataset) else 0


def process_shard(source: Source, process_index: int | None = None, process_count: int | None = None):
  """This process's disjoint, interleaved share of a source (all of it on a single host)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return grain.MapDataset.source(source)[index::count]


def train_iterator(
  source: Source,
  *,
  batch_size: int,
  seed: int,
  max_tokens: int,
  process_index: int | None = None,
  process_count: int | None = None,
  memory_bytes: int = MEMORY_BYTES,
  training: TrainingData = TrainingData(),
  augment: BatchTransform | None = None,
  random_crops: bool = False,
  workers: int = 0,
) -> grain.DatasetIterator:
  """Endless shuffled batches of this process's share of the global batch (`batch_size` is global).

  The shard is decoded into memory first if it takes at most `memory_bytes` (0: always decode per batch).
  `training` says which examples, in which order, and how batches change (`TrainingData`); `augment`
  changes each batch first. `random_crops` reads each image as a random-resized crop (`source` is then an
  `ExampleView` with an image size). Each is a function of the batch number, as the iterator's state is.
  `workers` > 0 builds batches in that many processes (grain's `mp_prefetch`): the same batches, since
  each is a function of its number alone.
  """
  imbalance.check(training.imbalance_ratio, training.sampler)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if batch_size % count:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {count} processes")
  view = source if isinstance(source, ExampleView) and source.random_crops else None
  if random_crops and view is None:
    raise ConfigError("augment.image_random_resized_crop needs dataset.image_size > 0 (the size it crops to)")
  subset = training.indices(source)
  # Subsetted before sharding, so the processes share out the same subset.
  train_set = source if len(subset) == len(source) else imbalance.Subset(source, subset)
  decode = DecodeExample(max_tokens)
  decoded = process_shard(train_set, index, count).map(decode)
  if training.sampler == "class_balanced":
    labels = imbalance.read_labels(source)[subset][index::count]  # The labels of `decoded`, in order.
    order = imbalance.ClassBalancedSampler(labels, batch_size // count, seed, stream=index)
  else:
    order = EpochShuffle(len(decoded), batch_size // count, seed)
  in_memory = not random_crops and decoded_bytes(decoded) <= memory_bytes
  arrays = DecodedArrays(decoded) if in_memory else None
  transforms = [t for t in (augment, *training.transforms) if t is not None and t.active]
  mean, std = normalisation(source)
  source_index = subset[index::count]  # The source's index of each example of `decoded`.

  def example(k: int, row: int, i: int) -> dict[str, np.ndarray | np.generic]:
    if not random_crops or view is None:
      return decoded[i]
    rng = np.random.default_rng([CROP_STREAM, seed % 2**32, index, k, row])
    return decode.map(view.example(int(source_index[i]), rng))

  def batch(k: int) -> dict[str, np.ndarray]:
    indices = order(k)
    if arrays:
      examples = arrays.gather(indices)
    else:
      examples = stack_examples([example(k, row, int(i)) for row, i in enumerate(indices)])
    examples = normalise_batch(examples, mean, std, empty=_empty)
    for transform in transforms:
      examples = transform(examples, np.random.default_rng([transform.stream, seed % 2**32, index, k]))
    return {name: _unshared(array) for name, array in examples.items()} if transforms else examples

  batches = grain.MapDataset.range(sys.maxsize).map(batch)
  if arrays:
    # Gathering from memory takes ~0.1 ms a batch, so it runs inline: prefetch threads would only contend
    # with the step for the cores, and grain's default (16 threads, 500 batches ahead) costs ~5 ms a batch
    # in bookkeeping.
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  else:  # Decoding from records overlaps with the step, a few batches ahead.
    options = grain.ReadOptions(num_threads=0 if workers else 2, prefetch_buffer_size=0 if workers else 8)
  stream = batches.to_iter_dataset(options)
  if workers and not arrays:
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; a library caller parsed none.
      flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
    stream = stream.mp_prefetch(options, worker_init_fn=_mark_worker).map(_owned)
  # The state is the next batch number, as for grain's own `.batch()` of the same stream.
  return iter(stream)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int | None = None) -> int:
  """How many batches `eval_batches` yields on every process (the most any process's share needs)."""
  count = jax.process_count() if process_count is None else process_count
  return math.ceil(math.ceil(num_examples / count) / (batch_size // count))


def eval_batches(
  source: Source,
  *,
  batch_size: int,
  max_tokens: int,
  process_index: int | None = None,
  process_count: int | None = None,
  transform: EvalTransform | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over this process's share; `weight` is 1 for real examples, 0 for padding.

  Every process yields the same number of batches (padding as needed), because each batch is a
  collective step across all processes. `transform(batch, indices)` may change each batch, given its
  examples' positions in the split (so what it draws per example does not depend on the batching).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  local_batch = batch_size // count
  ds = process_shard(source, index, count).map(DecodeExample(max_tokens))
  for b in range(num_eval_batches(len(source), batch_size, count)):
    examples = [ds[i] for i in range(b * local_batch, min((b + 1) * local_batch, len(ds)))]
    weight = np.zeros(local_batch, np.float32)
    weight[: len(examples)] = 1.0
    template = examples[0] if examples else ds[0]
    examples += [template] * (local_batch - len(examples))
    batch = stack_examples(examples)
    batch["weight"] = weight
    batch = normalise_batch(batch, *normalisation(source))
    if transform is not None:
      positions = np.minimum(np.arange(b * local_batch, (b + 1) * local_batch), len(ds) - 1)
      batch = transform(batch, index + count * positions)  # Padding repeats the last real position.
    yield batch
