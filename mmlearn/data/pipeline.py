"""grain input pipelines: random-access source -> process shard -> seeded shuffle -> decode -> batches.

Training iterators are checkpointable (`get_state`/`set_state`, saved with the train state), and
reproducible: the same seed gives the same batches in the same order, across restarts. Evaluation walks
a split once, in order, padding the last batch with zero-weight examples so every example counts once.
"""

import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np

# Features the pipeline turns into model inputs; everything else (attributes, captions) is dropped.
TOKEN_FEATURES = {"tokens": "text"}  # feature name -> modality name (padded, with a `<modality>_mask`).
ARRAY_FEATURES = ("image", "audio")  # uint8 arrays, scaled to [-1, 1] floats.


class DecodeExample(grain.transforms.Map):
  """Keeps model inputs and the label; pads/truncates token sequences to `max_tokens` with a mask."""

  def __init__(self, max_tokens: int):
    self.max_tokens = max_tokens

  def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {"label": np.int32(example["label"])}
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


def normalise_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Scales uint8 arrays to [-1, 1] once per batch (vectorised, cheaper than per example)."""
  batch = dict(batch)
  for name in ARRAY_FEATURES:
    if name in batch:
      batch[name] = batch[name].astype(np.float32) * (2.0 / 255.0) - 1.0
  return batch


def process_shard(source: Any, process_index: int | None = None, process_count: int | None = None):
  """This process's disjoint, interleaved share of a source (all of it on a single host)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return grain.MapDataset.source(source)[index::count]


def train_iterator(
  source: Any,
  *,
  batch_size: int,
  seed: int,
  max_tokens: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DatasetIterator:
  """Endless shuffled batches of this process's share of the global batch (`batch_size` is global)."""
  count = jax.process_count() if process_count is None else process_count
  if batch_size % count:
    raise ValueError(f"batch size {batch_size} is not divisible by the {count} processes")
  ds = process_shard(source, process_index, count).shuffle(seed=seed).repeat()
  ds = ds.map(DecodeExample(max_tokens)).batch(batch_size // count, drop_remainder=True)
  return iter(ds.map(normalise_batch))


def eval_batches(
  source: Any,
  *,
  batch_size: int,
  max_tokens: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over this process's share; `weight` is 1 for real examples, 0 for padding.

  Every process yields the same number of batches (padding as needed), because each batch is a
  collective step across all processes.
  """
  count = jax.process_count() if process_count is None else process_count
  local_batch = batch_size // count
  ds = process_shard(source, process_index, count).map(DecodeExample(max_tokens))
  num_batches = math.ceil(math.ceil(len(source) / count) / local_batch)
  for b in range(num_batches):
    examples = [ds[i] for i in range(b * local_batch, min((b + 1) * local_batch, len(ds)))]
    weight = np.zeros(local_batch, np.float32)
    weight[: len(examples)] = 1.0
    template = examples[0] if examples else ds[0]
    examples += [template] * (local_batch - len(examples))
    batch = {k: np.stack([ex[k] for ex in examples]) for k in template}
    batch["weight"] = weight
    yield normalise_batch(batch)
