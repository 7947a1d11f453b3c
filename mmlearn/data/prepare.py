"""Preparing a dataset into ArrayRecord shards: no TensorFlow, memory independent of its size, resumable.

TFDS's own writer buffers a whole split in memory to shuffle it, and spills to disk through TensorFlow's
file API past 1 GB, which crashes without TensorFlow. mmlearn reads splits by random access and shuffles
indices itself (`mmlearn.data.pipeline`), so nothing needs shuffling here: a split is written in its
source's order, `examples_per_shard` records a file, each record serialized by the builder's TFDS
features, and the directory is then described with TFDS's own `dataset_info.json`, so the builder reads
it back with `as_data_source` as it would its own files.

* Memory: records stream from the source to the open shard; at most one shard file is open and, with
  `workers`, at most a bounded window of examples is in flight (`examples_of`).
* Parallel: a builder that gives work items and a top-level `encode` function (`SplitPlan`) has them
  decoded, resized and serialized in `workers` processes (started with "spawn": a process holding JAX's
  threads must not fork); the order of the records is the items' order whatever the workers do.
* Resumable: each shard is written under a temporary name and renamed when complete, into
  `<version>.incomplete/`; a preparation that is killed leaves its finished shards, and the next one
  skips them (their examples are not encoded again) and continues at the first unfinished shard. Only
  when every split is written does the directory get its `dataset_info.json` and its final name, so a
  half-written dataset is never read as complete. A shard's bytes depend only on its examples, so a
  resumed preparation writes the same files as an uninterrupted one.
* One at a time: the preparation holds an exclusive lock beside the directory (`<version>.lock`); a
  second preparation of the same dataset (another run, another host on a shared file system) is refused
  in one line naming the holder.
* Progress: a line every 10 s with the examples written, the rate and the time left, once a split takes
  longer than that (`mmlearn.data.progress`), and a line saying what was prepared where.
"""

import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer

from mmlearn import locks
from mmlearn.data.progress import Progress
from mmlearn.errors import DataError

EXAMPLES_PER_SHARD = 4096
CHUNK = 16  # Items a worker encodes per task.
INCOMPLETE, LOCK = ".incomplete", ".lock"
SPLIT_DONE = "{split}.lengths.json"  # A split's shard lengths, written when all its shards are.
# Shard files are named by their index alone, so a split's shards can be written before its size is known.
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}"
# ArrayRecord's group size 1: every record is its own chunk, so random access reads one record.
WRITER_OPTIONS = "group_size:1"


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One split to write: `items` in order, each turned into an example by `encode` (None: items are
  examples). `encode` runs in worker processes, so it and the items must pickle (a top-level function,
  plain data); `num_examples` (if known) lets progress lines show the time left."""

  items: Iterable[Any]
  encode: Callable[[Any], Mapping[str, Any]] | None = None
  num_examples: int | None = None


def incomplete_dir(prepared_dir: str) -> str:
  return prepared_dir.rstrip("/") + INCOMPLETE


@contextlib.contextmanager
def exclusive(prepared_dir: str, *, wait: bool = False) -> Iterator[None]:
  """Holds the preparation lock of `prepared_dir`. Another preparation holding it is a `DataError`, or
  with `wait` (the other hosts of a multi-host job) is waited for."""
  os.makedirs(os.path.dirname(prepared_dir.rstrip("/")), exist_ok=True)
  path = prepared_dir.rstrip("/") + LOCK

  def busy(holder: str) -> DataError:
    return DataError(f"{prepared_dir} is being prepared by process {holder} ({path}); wait for it to finish")

  with locks.held(path, busy, wait=wait):
    yield


class ShardedSplitWriter:
  """Writes one split's serialized records into shards of `examples_per_shard`, each renamed when full."""

  def __init__(self, template: tfds.core.ShardedFileTemplate, examples_per_shard: int):
    self.template, self.examples_per_shard = template, examples_per_shard

  def path(self, shard: int) -> str:
    return os.fspath(self.template.sharded_filepath(shard_index=shard, num_shards=None))

  def finished_shards(self) -> int:
    """How many leading shards a previous preparation finished: full shards under their final names.

    A short shard is a split's last; without the split's record of completion (`SPLIT_DONE`) the run was
    killed before it could write that record, so the short shard is removed and written again.
    """
    shard = 0
    while os.path.exists(self.path(shard)):
      reader = array_record_module.ArrayRecordReader(self.path(shard), "readahead_buffer_size:0")
      full = reader.num_records() == self.examples_per_shard
      reader.close()
      if not full:
        os.remove(self.path(shard))
        break
      shard += 1
    return shard

  def write(self, records: Iterator[bytes], first_shard: int) -> list[int]:
    """Writes `records` (those of shards `first_shard` on) and returns the lengths of every shard.

    A write that fails (a full disk) is a `DataError` naming the shard; the shards finished before it
    stay, so a rerun continues from there.
    """
    lengths = [self.examples_per_shard] * first_shard
    shard, count, writer, temporary = first_shard, 0, None, ""
    try:
      for record in records:
        if writer is None:
          temporary = f"{self.path(shard)}.tmp{os.getpid()}"
          writer = self._io(shard, array_record_module.ArrayRecordWriter, temporary, WRITER_OPTIONS)
        self._io(shard, writer.write, record)
        count += 1
        if count == self.examples_per_shard:
          self._finish(writer, temporary, shard)
          lengths.append(count)
          shard, count, writer = shard + 1, 0, None
      if writer is not None:
        self._finish(writer, temporary, shard)
        lengths.append(count)
        writer = None
    finally:
      if writer is not None:  # An error mid-shard: the partial file is not a shard.
        with contextlib.suppress(RuntimeError):
          writer.close()
        with contextlib.suppress(FileNotFoundError):
          os.remove(temporary)
    return lengths

  def _finish(self, writer: Any, temporary: str, shard: int) -> None:
    self._io(shard, writer.close)
    os.replace(temporary, self.path(shard))

  def _io(self, shard: int, operation: Callable[..., Any], *args: Any) -> Any:
    """`operation(*args)`; array_record's I/O failures (ENOSPC, EFBIG: RuntimeErrors) name the shard."""
    try:
      return operation(*args)
    except RuntimeError as e:
      raise DataError(
        f"cannot write {self.path(shard)} ({str(e).split(';')[0]}); the {shard} shards finished before "
        "it are kept: make room and run again to continue"
      ) from None


def serializer(features: tfds.features.FeaturesDict) -> Callable[[Mapping[str, Any]], bytes]:
  """example dict -> the record TFDS's readers decode (`features.deserialize_example_np`).

  Serialized deterministically: protobuf writes a map's entries (the example's features) in an order
  that may change with the process's hash seed, which would make two preparations differ in bytes.
  """
  examples = example_serializer.ExampleSerializer(features.get_serialized_info())
  return lambda example: examples.get_tf_example(features.encode_example(example)).SerializeToString(
    deterministic=True
  )


def _encode_chunk(encode: Callable[[Any], Mapping[str, Any]], items: list[Any]) -> list[Mapping[str, Any]]:
  return [encode(item) for item in items]


def _results(future: concurrent.futures.Future) -> list[Mapping[str, Any]]:
  try:
    return future.result()
  except concurrent.futures.process.BrokenProcessPool:
    raise DataError(
      "a preparation worker process died (killed, out of memory, or it could not start: workers import "
      "the main script, so a script that prepares data must call mmlearn under `if __name__ == "
      '"__main__":`)'
    ) from None


def examples_of(
  plan: SplitPlan, skip: int, executor: concurrent.futures.Executor | None, window: int
) -> Iterator[Mapping[str, Any]]:
  """The plan's examples from index `skip` on (earlier items are passed over without being encoded).

  With an `executor`, items are encoded there in chunks, at most `window` chunks ahead of what has been
  written, and yielded in order: memory stays bounded whatever the split's size.
  """
  items = iter(plan.items)
  for _ in range(skip):
    if next(items, None) is None:
      raise DataError(f"the source has fewer examples than the {skip} its finished shards hold")
  if plan.encode is None:
    yield from items
    return
  if executor is None:
    yield from map(plan.encode, items)
    return
  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  while chunk := list(itertools.islice(items, CHUNK)):
    pending.append(executor.submit(_encode_chunk, plan.encode, chunk))
    if len(pending) >= window:
      yield from _results(pending.popleft())
  while pending:
    yield from _results(pending.popleft())


def _write_json(path: str, value: Any) -> None:
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump(value, f)
  os.replace(temporary, path)


def _serialized(
  examples: Iterator[Mapping[str, Any]], serialize: Callable[[Mapping[str, Any]], bytes], progress: Progress
) -> Iterator[bytes]:
  for example in examples:
    yield serialize(example)
    progress.update()


def write_dataset(
  builder: tfds.core.DatasetBuilder,
  plans: Mapping[str, SplitPlan],
  *,
  prepared_dir: str,
  write_extra: Callable[[str], None] = lambda directory: None,
  examples_per_shard: int = EXAMPLES_PER_SHARD,
  workers: int = 0,
  description: str = "",
) -> None:
  """Writes every split of `plans` into `prepared_dir` (see the module docstring), then its metadata.

  `write_extra(directory)` writes the builder's own files (a tokenizer, a layout) beside the shards before
  the directory is renamed. `workers` > 1 encodes in that many processes.
  """
  directory = incomplete_dir(prepared_dir)
  resuming = os.path.isdir(directory)
  os.makedirs(directory, exist_ok=True)
  for name in os.listdir(directory):  # A killed preparation's unfinished shard (this one holds the lock).
    if ".tmp" in name:
      os.remove(os.path.join(directory, name))
  sizes = ", ".join(
    f"{split} {plan.num_examples if plan.num_examples is not None else '?'}" for split, plan in plans.items()
  )
  logging.info(
    "%s %s into %s (examples: %s)",
    "resuming the preparation of" if resuming else "preparing",
    description or builder.name,
    prepared_dir,
    sizes,
  )
  serialize = serializer(builder.info.features)
  executor = None
  if workers > 1 and any(plan.encode is not None for plan in plans.values()):
    executor = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")
    )
  split_infos = []
  try:
    for split, plan in plans.items():
      template = tfds.core.ShardedFileTemplate(
        data_dir=tfds.core.Path(directory),
        template=FILENAME_TEMPLATE,
        dataset_name=builder.name,
        split=split,
        filetype_suffix="array_record",
      )
      writer = ShardedSplitWriter(template, examples_per_shard)
      done_path = os.path.join(directory, SPLIT_DONE.format(split=split))
      if os.path.isfile(done_path):  # Finished by an earlier, interrupted preparation.
        with open(done_path) as f:
          lengths = json.load(f)
      else:
        done = writer.finished_shards()
        progress = Progress(
          f"preparing {description or builder.name} {split}",
          plan.num_examples,
          unit="examples",
          done=done * examples_per_shard,
        )
        examples = examples_of(plan, done * examples_per_shard, executor, window=4 * workers)
        lengths = writer.write(_serialized(examples, serialize, progress), done)
        progress.finish()
        if not sum(lengths):
          raise DataError(f"split {split!r} of {builder.name} has no examples")
        _write_json(done_path, lengths)
      num_bytes = sum(os.path.getsize(writer.path(i)) for i in range(len(lengths)))
      info = tfds.core.SplitInfo(split, lengths, num_bytes, filename_template=template)
      split_infos.append(info)
  finally:
    if executor is not None:
      executor.shutdown(wait=False, cancel_futures=True)
  write_extra(directory)
  builder.info.set_file_format("array_record", override=True, override_if_initialized=True)
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(directory)
  for split in plans:
    os.remove(os.path.join(directory, SPLIT_DONE.format(split=split)))
  if os.path.exists(prepared_dir):  # Only a directory without its metadata (an old interrupted run).
    shutil.rmtree(prepared_dir)
  os.replace(directory, prepared_dir)
  builder.info.read_from_directory(prepared_dir)  # The builder reads its files where they now are.
  total = sum(info.num_bytes for info in split_infos) / 2**20
  written = ", ".join(f"{info.name} {info.num_examples}" for info in split_infos)
  logging.info(
    "prepared %s in %s: %s examples, %.1f MiB", description or builder.name, prepared_dir, written, total
  )


def is_prepared(prepared_dir: str) -> bool:
  return os.path.isfile(os.path.join(prepared_dir, "dataset_info.json"))
