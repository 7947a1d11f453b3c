"""Tar shards read in place, by sample: `TarShardSource` (random access over indexed shards, as stored) and
`DirectSource` (a split of the `tarshards` builder read without preparation, as preparation stores it).

Members are read at their indexed byte offsets (`os.pread`); a source pickles without its open files, so
the input pipeline's worker processes each open their own. Images read in place keep their shard and
member (`MemberBytes`), so an image that fails to decode in the pipeline is named by both.
"""

import collections
import dataclasses
import functools
import operator
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mmlearn.data import media
from mmlearn.data.tar_index import (
  MAX_OPEN_SHARDS,
  Location,
  TarIndex,
  _json,
  _pread,
  _text,
  scan,
)
from mmlearn.errors import DataError


class MemberBytes(bytes):
  """A member's bytes that remember which member they are (`where`), so an image that fails to decode
  later, in the input pipeline's decoder (`MemberImageDecoder`), is reported by shard and member.
  Equal to, and used as, the plain bytes."""

  where: str

  def __new__(cls, data: bytes, where: str):
    member = super().__new__(cls, data)
    member.where = where
    return member

  def __reduce__(self):
    return (MemberBytes, (bytes(self), self.where))


@dataclasses.dataclass(frozen=True)
class MemberImageDecoder(media.ImageDecoder):
  """`media.ImageDecoder` whose errors name the shard and member of images read in place (`MemberBytes`)."""

  def __call__(self, data: bytes) -> np.ndarray:
    try:
      return super().__call__(data)
    except DataError as e:
      where = getattr(data, "where", None)
      if where is None:
        raise
      raise DataError(f"{where}: {e}") from None


def read_sample(fd: int, location: Location) -> dict[str, Any]:
  """A sample's content, read from the open shard `fd`: {"image": its bytes (`MemberBytes`), "caption",
  "key", and "label" (its class name) when it has one}."""
  where = location.where(location.image_ext)
  image = MemberBytes(_pread(fd, *location.image, where), where)
  where = location.where(location.caption_ext)
  data = _pread(fd, *location.caption, where)
  if location.caption_ext.lower() == "json":
    caption = _json(data, where).get("caption")
    if not isinstance(caption, str):
      raise DataError(f"{where}: no 'caption' text (the shard changed since it was indexed)")
    caption = caption.strip()
  else:
    caption = _text(data, where)
  if not caption:
    raise DataError(f"{where}: the caption is empty")
  sample = {"image": image, "caption": caption, "key": location.key}
  if location.label is not None:
    sample["label"] = location.label
  return sample


def encode_example(
  location: Location, *, shape: tuple[int, int, int] | None, channels: int
) -> dict[str, Any]:
  """The example preparation stores for a sample (run in worker processes): its image checked to decode,
  resized and re-encoded with `shape`, its caption and key as text and its label by class name."""
  fd = os.open(location.shard, os.O_RDONLY)
  try:
    sample = read_sample(fd, location)
  finally:
    os.close(fd)
  image = sample["image"]
  sample["image"] = media.prepared_image(bytes(image), shape, image.where, channels)
  return sample


class TarShardSource:
  """Random access to the samples of tar shards, read in place: `len`, and `[i]` -> {"image": bytes,
  "caption": str, "key": str, and "label": str (its class name) when the shards have labels}.

  Element `i` is the `i`-th sample of the shards in the order given, each in tar order. Shards are
  opened on first read in each process, at most `MAX_OPEN_SHARDS` at once, and open files are not
  pickled: the source goes to spawned (or forked) worker processes, and each opens its own.
  """

  def __init__(self, paths: Sequence[str] = (), *, indexes: Sequence[TarIndex] | None = None):
    self.indexes = list(indexes) if indexes is not None else [scan(path) for path in paths]
    self._ends = np.cumsum([len(index) for index in self.indexes], dtype=np.int64)
    self._reset()

  def _reset(self) -> None:
    self._pid = os.getpid()
    self._lock = threading.Lock()  # Pipeline threads share the open files; one evicts what another reads.
    self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()  # shard -> fd, LRU order.

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k not in ("_pid", "_lock", "_fds")}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._reset()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def locate(self, i: int) -> tuple[int, Location]:
    """(shard number, location) of sample `i`."""
    i = operator.index(i)
    if not 0 <= i < len(self):
      raise IndexError(f"sample {i} of a source of {len(self)}")
    shard = int(np.searchsorted(self._ends, i, side="right"))
    return shard, self.indexes[shard].location(i - (int(self._ends[shard - 1]) if shard else 0))

  def locations(self) -> Iterator[Location]:
    for index in self.indexes:
      for i in range(len(index)):
        yield index.location(i)

  def __getitem__(self, i: int) -> dict[str, Any]:
    shard, location = self.locate(i)
    if self._pid != os.getpid():  # Forked: the parent's lock may be held by a thread the child lacks.
      for fd in self._fds.values():  # This process's copies of the parent's open files.
        os.close(fd)
      self._reset()
    with self._lock:
      return read_sample(self._fd(shard), location)

  def _fd(self, shard: int) -> int:
    if shard in self._fds:
      self._fds.move_to_end(shard)
      return self._fds[shard]
    if len(self._fds) >= MAX_OPEN_SHARDS:
      os.close(self._fds.popitem(last=False)[1])
    fd = self._fds[shard] = os.open(self.indexes[shard].path, os.O_RDONLY)
    return fd

  def close(self) -> None:
    if self._pid == os.getpid():
      while self._fds:
        os.close(self._fds.popitem()[1])

  def __del__(self, _getpid=os.getpid, _close=os.close) -> None:
    # Bound at definition, as the standard library does: at exit, `os` may be gone before the source.
    if self.__dict__.get("_pid") == _getpid():
      for fd in self._fds.values():
        _close(fd)


@dataclasses.dataclass(frozen=True)
class DirectSource:
  """A split read from its shards in place, giving for every `i` what the prepared split's
  `as_data_source(split)[i]` gives: "image" the stored bytes (resized and re-encoded with `image_shape`,
  as preparation does, else the member's own), "caption" and "key" UTF-8 bytes (TFDS's text in numpy
  mode), "label" the class id (an int)."""

  shards: TarShardSource
  class_names: tuple[str, ...] | None
  image_shape: tuple[int, int, int] | None
  channels: int

  @functools.cached_property
  def _class_ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.class_names or ())}

  def __len__(self) -> int:
    return len(self.shards)

  def __getitem__(self, i: int) -> dict[str, Any]:
    sample = self.shards[i]
    image, where = sample["image"], sample["image"].where
    if self.image_shape is not None:  # Checks that it decodes, as preparation does.
      image = media.prepared_image(bytes(image), self.image_shape, where, self.channels)
    example = {"image": image, "caption": sample["caption"].encode(), "key": sample["key"].encode()}
    if self.class_names is not None:
      label = sample.get("label")
      if label not in self._class_ids:
        raise DataError(f"{where}: label {label!r} is none of the dataset's classes")
      example["label"] = self._class_ids[label]
    return example
