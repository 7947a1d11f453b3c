"""WebDataset-style tar shards indexed in place: where each sample's members lie, without unpacking.

A shard's headers are read once (`scan`, seeking past the data) and its members are grouped into samples
as WebDataset groups them (see `mmlearn.data.tarshards` for the rules): the index holds each sample's
members' byte offsets and sizes, and its caption and label. Reading samples by index is
`mmlearn.data.tar_source`.
"""

import dataclasses
import json
import os
import re
import sys
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmlearn.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_OPEN_SHARDS = 64  # File descriptors a source keeps open per process (most systems allow 1024).
MAX_CLASS_NUMBER = 100_000  # Numeric labels are class numbers: 0 .. the largest are the classes.
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)  # A tar ends with zero blocks; a truncated one lacks them.
_DECIMAL = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True)
class TarIndex:
  """The samples of one shard, in tar order: where each one's members are, and its label.

  Compact on purpose: a source holds the index of every shard and is pickled into each pipeline worker,
  so a sample costs two short strings and four integers, not a dict of members.
  """

  path: str
  keys: list[str]
  image_exts: list[str]  # The image member's extension as written (`key + "." + ext` is its name).
  caption_exts: list[str]  # "txt" or "json", as written.
  spans: np.ndarray  # int64 [N, 4]: image offset, image size, caption offset, caption size.
  labels: list[str | None]  # Normalised (`normalise_label`); None: the sample has no label.

  def __len__(self) -> int:
    return len(self.keys)

  def location(self, i: int) -> "Location":
    image_offset, image_size, caption_offset, caption_size = (int(v) for v in self.spans[i])
    return Location(
      shard=self.path,
      key=self.keys[i],
      image_ext=self.image_exts[i],
      image=(image_offset, image_size),
      caption_ext=self.caption_exts[i],
      caption=(caption_offset, caption_size),
      label=self.labels[i],
    )


@dataclasses.dataclass(frozen=True)
class Location:
  """Where one sample's members are: what preparation's work items carry to the worker processes."""

  shard: str
  key: str
  image_ext: str
  image: tuple[int, int]  # (offset of the data, size)
  caption_ext: str
  caption: tuple[int, int]
  label: str | None

  def where(self, ext: str) -> str:
    """The member for error messages: `<shard>: member <key>.<ext>`."""
    return f"{self.shard}: member {self.key}.{ext}"


def split_name(name: str) -> tuple[str, str] | None:
  """(key, extension) of a member name, WebDataset's way; None for a name that is no sample's part."""
  directory, _, base = name.rpartition("/")
  stem, dot, ext = base.partition(".")
  if not dot or not stem or not ext:
    return None
  return (f"{directory}/{stem}" if directory else stem), ext


def group_members(
  members: Sequence[tuple[str, int, int]], path: str
) -> dict[str, dict[str, tuple[int, int]]]:
  """Member (name, data offset, size) -> {key: {extension: (offset, size)}}, keys in tar order.

  A key's members need not be adjacent (WebDataset writers make them so; tar tools may not). The same
  extension twice for one key is an error: either member could be the sample's.
  """
  samples: dict[str, dict[str, tuple[int, int]]] = {}
  for name, offset, size in members:
    parts = split_name(name)
    if parts is None:
      continue
    key, ext = parts
    sample = samples.setdefault(key, {})
    if ext in sample:
      raise DataError(f"{path}: member {name} appears twice")
    sample[ext] = (offset, size)
  return samples


def _member(sample: Mapping[str, tuple[int, int]], extensions: Sequence[str]) -> str | None:
  """The extension (as written) of the sample's member of the first kind in `extensions`."""
  by_kind = {ext.lower(): ext for ext in sample}
  return next((by_kind[kind] for kind in extensions if kind in by_kind), None)


def _read_members(path: str) -> tuple[list[tuple[str, int, int]], dict[str, bytes]]:
  """The regular members (name, data offset, size) of an uncompressed tar, read from its headers alone,
  and the bytes of its `json` and `cls` members (small: labels, captions' metadata)."""
  members, small = [], {}
  last = None  # The last member read, for messages about what follows it.
  with open(path, "rb") as f:
    fd = f.fileno()
    if os.pread(fd, 2, 0) == b"\x1f\x8b":
      raise DataError(f"{path}: a gzip-compressed tar; shards are read in place, so decompress it (gunzip)")
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
          last = info.name
          if not info.isreg():
            continue
          members.append((info.name, info.offset_data, info.size))
          parts = split_name(info.name)
          if parts and parts[1].lower() in ("json", "cls"):  # Short reads: tarfile's next step fails.
            small[info.name] = os.pread(fd, info.size, info.offset_data)
        end = tar.offset  # Where tarfile stopped: the end-of-archive marker, if the tar is whole.
    except tarfile.ReadError as e:
      if last is None:
        raise DataError(f"{path}: not an uncompressed tar ({e})") from None
      raise DataError(f"{path}: truncated or corrupt tar after member {last} ({e})") from None
    # tarfile stops quietly at an empty or unreadable header: a tar cut at a member boundary, or with a
    # damaged header, would lose its remaining samples without a word. A whole tar ends in zero blocks.
    if os.pread(fd, tarfile.BLOCKSIZE, end) != _END_OF_ARCHIVE:
      raise DataError(
        f"{path}: truncated or corrupt tar after member {last} (no end-of-archive blocks at byte {end})"
      )
  return members, small


def _pread(fd: int, offset: int, size: int, where: str) -> bytes:
  data = os.pread(fd, size, offset)
  if len(data) != size:
    raise DataError(
      f"{where}: truncated ({len(data)} of {size} bytes; the shard changed since it was indexed)"
    )
  return data


def _json(data: bytes, where: str) -> dict[str, Any]:
  try:
    value = json.loads(data)
  except (ValueError, UnicodeDecodeError) as e:
    raise DataError(f"{where}: not JSON ({e})") from None
  if not isinstance(value, dict):
    raise DataError(f"{where}: not a JSON object, got {type(value).__name__}")
  return value


def _text(data: bytes, where: str) -> str:
  try:
    return data.decode("utf-8").strip()
  except UnicodeDecodeError as e:
    raise DataError(f"{where}: not UTF-8 text ({e})") from None


def normalise_label(label: Any, where: str) -> str:
  """A label's class name: text stripped, a decimal integer as its number ("007" -> "7")."""
  if isinstance(label, bool) or not isinstance(label, str | int):
    raise DataError(f"{where}: label {label!r} is neither text nor an integer")
  text = str(label).strip()
  if not text:
    raise DataError(f"{where}: empty label")
  return str(int(text)) if _DECIMAL.fullmatch(text) else text


def _metadata(path: str, key: str, sample: Mapping[str, tuple[int, int]], small: Mapping[str, bytes]) -> dict:
  """The sample's `json` member, parsed ({} without one)."""
  ext = _member(sample, ("json",))
  return {} if ext is None else _json(small[f"{key}.{ext}"], f"{path}: member {key}.{ext}")


def _caption_ext(path: str, key: str, sample: Mapping[str, tuple[int, int]], metadata: Mapping) -> str | None:
  """The extension of the member holding the caption: `txt`, else a `json` with a "caption" string."""
  ext = _member(sample, ("txt",))
  if ext is not None or "caption" not in metadata:
    return ext
  ext = _member(sample, ("json",))
  if not isinstance(metadata["caption"], str):
    raise DataError(
      f"{path}: member {key}.{ext}: 'caption' is {type(metadata['caption']).__name__}, not text"
    )
  return ext


def _label(path: str, key: str, sample: Mapping[str, tuple[int, int]], small: Mapping, metadata: Mapping):
  """The sample's label (`cls`, else `json`'s "label"), normalised; None without one."""
  ext = _member(sample, ("cls",))
  if ext is not None:
    where = f"{path}: member {key}.{ext}"
    return normalise_label(_text(small[f"{key}.{ext}"], where), where)
  if metadata.get("label") is None:
    return None
  return normalise_label(metadata["label"], f"{path}: member {key}.{_member(sample, ('json',))}")


def scan(path: str) -> TarIndex:
  """The samples of the shard at `path` (see the module docstring), from its headers; bad shards, and
  samples missing their image or caption, are `DataError`s naming the shard and the member or key."""
  members, small = _read_members(path)
  keys, image_exts, caption_exts, spans, labels = [], [], [], [], []
  for key, sample in group_members(members, path).items():
    images = [ext for ext in sample if ext.lower() in IMAGE_EXTENSIONS]
    metadata = _metadata(path, key, sample, small)
    caption_ext = _caption_ext(path, key, sample, metadata)
    if not images and caption_ext is None:
      continue  # Not a sample: metadata or another file beside the samples.
    has = ", ".join(f"{key}.{ext}" for ext in sample)
    if not images:
      raise DataError(f"{path}: sample {key} has no image ({', '.join(IMAGE_EXTENSIONS)}); it has {has}")
    if len(images) > 1:
      raise DataError(f"{path}: sample {key} has {len(images)} images ({has}); keep one")
    if caption_ext is None:
      raise DataError(f"{path}: sample {key} has no caption (.txt, or .json with 'caption'); it has {has}")
    keys.append(key)
    image_exts.append(sys.intern(images[0]))
    caption_exts.append(sys.intern(caption_ext))
    spans.append((*sample[images[0]], *sample[caption_ext]))
    label = _label(path, key, sample, small, metadata)
    labels.append(None if label is None else sys.intern(label))
  if not keys:
    raise DataError(f"{path}: holds no samples (an image and a caption under one key)")
  return TarIndex(
    path=path,
    keys=keys,
    image_exts=image_exts,
    caption_exts=caption_exts,
    spans=np.asarray(spans, np.int64).reshape(-1, 4),
    labels=labels,
  )


def class_names(indexes: Sequence[TarIndex]) -> tuple[str, ...] | None:
  """The shards' class names (module docstring: numbers 0 .. the largest, else the sorted labels); None
  without labels. A sample without a label among samples with one is an error naming both."""
  names: set[str] = set()
  missing = None  # (shard, key) of a sample without a label.
  for index in indexes:
    labels = set(index.labels)
    if None in labels and missing is None:
      missing = (index.path, index.keys[index.labels.index(None)])
    names.update(label for label in labels if label is not None)
  if not names:
    return None
  if missing is not None:
    having = next(
      (i.path, i.keys[n]) for i in indexes for n, label in enumerate(i.labels) if label is not None
    )
    raise DataError(
      f"{missing[0]}: sample {missing[1]} has no label (.cls or json 'label'), but sample {having[1]} of "
      f"{having[0]} has one; give every sample a label or none"
    )
  if all(_DECIMAL.fullmatch(name) for name in names):
    largest = max(map(int, names))
    if largest >= MAX_CLASS_NUMBER:
      index = next(i for i in indexes if str(largest) in i.labels)
      raise DataError(
        f"{index.path}: sample {index.keys[index.labels.index(str(largest))]} has label {largest}, a class "
        f"number of {largest + 1} classes (at most {MAX_CLASS_NUMBER}); number the classes from 0"
      )
    return tuple(str(i) for i in range(largest + 1))
  return tuple(sorted(names))
