"""tarshards: images and captions (optionally labels) in WebDataset-style tar shards, read in place.

    config.dataset.name = "tarshards"
    config.dataset.manual_dir = "/data/cc3m"      # relative shard paths are relative to this directory
    config.dataset.config = "cc3m"                # your name for this dataset (part of its prepared path)
    config.dataset.options = {"train": "train-*.tar", "validation": ["val-000.tar", "val-001.tar"]}

A shard is an uncompressed tar whose members are grouped into samples as WebDataset groups them: a
member's key is its path up to the first "." of its last path component, the rest is its extension
("a/b/0001.jpg": key "a/b/0001", extension "jpg"; "0001.seg.png": extension "seg.png"). A sample is a key
with

* one image: `jpg`, `jpeg`, `png` or `webp` (extensions match in any case);
* a caption: `txt` (UTF-8, surrounding whitespace dropped), else `json`'s "caption" string;
* optionally a label: `cls` (text), else `json`'s "label" (a string or an integer). A label that is a
  decimal integer is that number ("007" is class 7); when every label is one, the class names are
  "0" .. the largest, so a label's class id is its number; otherwise they are the sorted labels. Either
  every sample has a label or none has.

A key with neither an image nor a caption (a metadata file, a mask, anything else) is not a sample and is
skipped; a key with only one of the two is an error, since it is a sample with its other half missing or
misnamed (a `.tif` image, a `.caption` file). Members whose last path component has no "." or starts
with one (`._0001.jpg`, macOS metadata) and members that are not regular files are skipped.

Options (`dataset.options`):

* `train`, `validation`, `test`: a glob or a list of globs and paths of the split's shards, relative to
  `dataset.manual_dir` (absolute paths too); a split left None does not exist, and one is needed.
  Shards are read in the order given, each glob's matches sorted; samples in tar order. So element `i`
  of a split is always the same sample.
* `image_shape`: None (default) stores each image's own bytes, untouched (checked to decode); or
  (H, W, C): every image is resized to it (bilinear) and re-encoded once (`media.prepared_image`).
* `channels`: 3 (RGB) or 1 (gray), what images decode to when `image_shape` is None.
* `direct`: False (default) prepares the dataset into ArrayRecord files (`mmlearn.data.prepare`:
  resumable, locked, read by random access); True reads the shards in place with no preparation
  (`Tarshards.direct_sources`), giving exactly what the prepared dataset gives. Direct reading skips a
  first pass over every image; preparing checks every image once, up front, and reads faster after.

In Python, prepared or read in place:

    sources, info = mmlearn.data.load_sources(
      "tarshards", config="cc3m", manual_dir="/data/cc3m", options={"train": "train-*.tar"}, splits=["train"]
    )
    builder_cls, config = mmlearn.data.resolve_config(
      "tarshards", "cc3m", options={"train": "train-*.tar", "direct": True}, manual_dir="/data/cc3m"
    )
    builder_cls(config=config).direct_sources()["train"][0]  # == sources["train"].records[0]
    TarShardSource(["/data/cc3m/train-000.tar"])[0]  # {"image": b"...", "caption": "...", "key": "..."}

Nothing is unpacked: a shard's headers are read once (`scan`, seeking past the data) and each sample's
members are then read at their byte offsets (`os.pread`). Stored features: `image` (encoded bytes,
decoded in the input pipeline by `Tarshards.decoders`), `caption`, `key` (the sample's key) and `label`
(a `ClassLabel`, when the shards have labels).

The prepared directory is `<data_dir>/tarshards/<dataset.config>-<hash of the options but direct>/
<version>`. The shards' names and sizes are stored with it; shards changed since are an error (delete
the prepared directory or pick another `dataset.config`). A shard rewritten in place at the same size is
not noticed: delete the prepared directory after rewriting shards.
"""

import dataclasses
import functools
import glob
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data import prepare
from mmlearn.data.builder import DEFAULT_CONFIG, LocalBuilder
from mmlearn.data.registry import DATASETS
from mmlearn.data.tar_index import TarIndex, class_names, scan
from mmlearn.data.tar_source import DirectSource, MemberImageDecoder, TarShardSource, encode_example
from mmlearn.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
LAYOUT = "tarshards.json"  # What the shards determined (class names, names and sizes), beside the records.
OPTIONS = {  # Option -> default; `dataset.options` may set any of them.
  "train": None,
  "validation": None,
  "test": None,
  "image_shape": None,
  "channels": 3,
  "direct": False,
}


def _patterns(split: str, value: Any) -> tuple[str, ...] | None:
  if value is None:
    return None
  values = (value,) if isinstance(value, str) else value
  if not isinstance(values, list | tuple) or not values or not all(isinstance(v, str) and v for v in values):
    raise ConfigError(f"dataset.options.{split} must be a glob or a list of tar paths, got {value!r}")
  return tuple(values)


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """`OPTIONS` updated with `options`, normalised (tuples) and checked; errors name the option."""
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ConfigError(f"unknown dataset.options {unknown} of 'tarshards'; known: {', '.join(OPTIONS)}")
  settings = {**OPTIONS, **options}
  for split in SPLITS:
    settings[split] = _patterns(split, settings[split])
  if all(settings[split] is None for split in SPLITS):
    raise ConfigError(
      "dataset 'tarshards' has no shards: set dataset.options.train (validation, test) to a glob or a list"
    )
  channels = settings["channels"]
  if isinstance(channels, bool) or channels not in (1, 3):
    raise ConfigError(f"dataset.options.channels must be 1 or 3, got {channels!r}")
  if settings["image_shape"] is not None:
    shape = settings["image_shape"] = tuple(settings["image_shape"])
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[2] not in (1, 3):
      raise ConfigError(f"dataset.options.image_shape must be None or (height, width, 1 or 3), got {shape}")
    if "channels" in options and channels != shape[2]:
      raise ConfigError(f"dataset.options.channels is {channels} but image_shape {shape} has {shape[2]}")
    settings["channels"] = shape[2]
  if not isinstance(settings["direct"], bool):
    raise ConfigError(f"dataset.options.direct must be True or False, got {settings['direct']!r}")
  return settings


def config_name(name: str, settings: Mapping[str, Any]) -> str:
  """`<name>-<10 hex digits of the options>`: a prepared directory per distinct set of stored options
  (`direct` only says how to read them, so it is left out)."""
  stored = {k: v for k, v in settings.items() if k != "direct"}
  digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:10]
  return f"{name}-{digest}"


def resolve_shards(manual_dir: str | None, patterns: Sequence[str], split: str) -> list[str]:
  """The shard files of `patterns` (relative to `manual_dir`), each glob's matches sorted, each file once."""
  paths: dict[str, None] = {}
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    if not os.path.isabs(pattern):
      if not manual_dir:
        raise ConfigError(
          f"dataset.options.{split} names {pattern!r}, a relative path: set dataset.manual_dir (or give "
          "absolute paths)"
        )
      pattern = os.path.join(os.path.expanduser(manual_dir), pattern)
    matches = [path for path in sorted(glob.glob(pattern)) if os.path.isfile(path)]
    if not matches:
      raise DataError(f"{pattern}: no tar shard matches it (dataset.options.{split})")
    paths.update(dict.fromkeys(matches))
  return list(paths)


def fingerprint(shards: Mapping[str, Sequence[str]], manual_dir: str | None) -> dict[str, list[list[Any]]]:
  """Each split's shards by name (relative to `manual_dir` when inside it) and size."""
  base = os.path.expanduser(manual_dir) if manual_dir else None

  def name(path: str) -> str:
    relative = os.path.relpath(path, base) if base else path
    return path if relative.startswith("..") else relative

  return {split: [[name(path), os.path.getsize(path)] for path in paths] for split, paths in shards.items()}


def _read_layout(prepared: str) -> dict[str, Any] | None:
  path = os.path.join(prepared, LAYOUT)
  if not (prepare.is_prepared(prepared) and os.path.isfile(path)):
    return None
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(eq=False)
class TarshardsConfig(tfds.core.BuilderConfig):
  """The options (see `OPTIONS`), the class names the shards determined (None: no labels), the raw
  directory, and the shards' indexes when they were read (not when read back from a prepared dataset)."""

  train: tuple[str, ...] | None = None
  validation: tuple[str, ...] | None = None
  test: tuple[str, ...] | None = None
  image_shape: tuple[int, int, int] | None = None
  channels: int = 3
  direct: bool = False
  class_names: tuple[str, ...] | None = None
  manual_dir: str | None = None
  indexes: dict[str, list[TarIndex]] | None = dataclasses.field(default=None, repr=False)


def index_splits(manual_dir: str | None, settings: Mapping[str, Any]) -> dict[str, list[TarIndex]]:
  """{split: its shards' indexes} for the splits `settings` give, in `SPLITS` order."""
  return {
    split: [scan(path) for path in resolve_shards(manual_dir, settings[split], split)]
    for split in SPLITS
    if settings[split] is not None
  }


@DATASETS.register("tarshards")
class Tarshards(LocalBuilder):
  """Images and captions (optionally labels) from WebDataset-style tar shards (see the module docstring);
  element `i` of a split is the `i`-th sample of its shards."""

  VERSION = tfds.core.Version("1.0.0")
  OPTIONS = OPTIONS
  RELEASE_NOTES = {"1.0.0": "First release."}

  @classmethod
  def make_config(
    cls, config: str | None, options: Mapping[str, Any], *, manual_dir: str | None, data_dir: str
  ) -> TarshardsConfig:
    """The config of `options`. Unprepared (or `direct`), the shards' headers are read (and their small
    label members, never the images); prepared, what they determined is read back from the prepared
    directory, so it reads without its raw files."""
    settings = check_options(options)
    name = config_name(config or DEFAULT_CONFIG, settings)
    prepared = os.path.join(data_dir, cls.name, name, str(cls.VERSION))
    layout = None if settings["direct"] else _read_layout(prepared)
    indexes = None
    if layout is None:
      indexes = index_splits(manual_dir, settings)
      names = class_names([index for split in indexes.values() for index in split])
    else:
      _check_unchanged(manual_dir, settings, layout["shards"], prepared)
      names = None if layout["class_names"] is None else tuple(layout["class_names"])
    return TarshardsConfig(
      name=name,
      description=f"{config or DEFAULT_CONFIG}: tar shards",
      **settings,
      class_names=names,
      manual_dir=manual_dir,
      indexes=indexes,
    )

  def features(self) -> tfds.features.FeaturesDict:
    config = self.builder_config
    features = {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # Encoded bytes (`decoders`).
      "caption": tfds.features.Text(),
      "key": tfds.features.Text(),
    }
    if config.class_names is not None:
      features["label"] = tfds.features.ClassLabel(names=config.class_names)
    return tfds.features.FeaturesDict(features)

  def decoders(self) -> dict[str, MemberImageDecoder]:
    config = self.builder_config
    return {"image": MemberImageDecoder(config.channels, config.image_shape)}

  def _indexes(self) -> dict[str, list[TarIndex]]:
    config = self.builder_config
    if config.indexes is None:
      config.indexes = index_splits(
        self._manual_dir or config.manual_dir, {split: getattr(config, split) for split in SPLITS}
      )
    return config.indexes

  def split_plans(self, dl_manager: tfds.download.DownloadManager) -> dict[str, prepare.SplitPlan]:
    """Each split's samples in order, encoded (read, checked, resized) in worker processes."""
    del dl_manager
    config = self.builder_config
    encode = functools.partial(encode_example, shape=config.image_shape, channels=config.channels)
    plans = {}
    for split, indexes in self._indexes().items():
      source = TarShardSource(indexes=indexes)
      plans[split] = prepare.SplitPlan(items=source.locations(), encode=encode, num_examples=len(source))
    return plans

  def write_extra(self, directory: str) -> None:
    """The class names and the shards' names and sizes, beside the records."""
    config = self.builder_config
    shards = {split: [index.path for index in indexes] for split, indexes in self._indexes().items()}
    layout = {"class_names": config.class_names, "shards": fingerprint(shards, config.manual_dir)}
    with open(os.path.join(directory, LAYOUT), "w") as f:
      json.dump(layout, f)

  def direct_sources(self, splits: Sequence[str] | None = None) -> dict[str, DirectSource]:
    """{split: the split read from its shards in place} for `splits` (default: every configured split):
    element for element what `as_data_source(split)` of the prepared dataset gives (`DirectSource`), with
    the same `decoders`. No preparation, and nothing is written."""
    config, indexes = self.builder_config, self._indexes()
    sources = {}
    for split in splits if splits is not None else list(indexes):
      if split not in indexes:
        raise DataError(f"unknown split {split!r} of 'tarshards'; known: {', '.join(indexes)}")
      shards = TarShardSource(indexes=indexes[split])
      sources[split] = DirectSource(shards, config.class_names, config.image_shape, config.channels)
    return sources


def _check_unchanged(manual_dir: str | None, settings: Mapping[str, Any], stored: Any, prepared: str) -> None:
  """A prepared dataset whose shards are still there must have been prepared from these shards."""
  try:
    shards = {
      split: resolve_shards(manual_dir, settings[split], split)
      for split in SPLITS
      if settings[split] is not None
    }
  except (ConfigError, DataError):
    return  # The raw files are gone (or were never given here): the prepared files are all there is.
  if fingerprint(shards, manual_dir) != stored:
    raise DataError(
      f"the shards of {prepared} changed since it was prepared from them (names or sizes); delete that "
      "directory to prepare it again, or set another dataset.config"
    )
