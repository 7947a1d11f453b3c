"""Datasets by name: prepare a TFDS builder once into `data_dir`, then read its splits by random access.

Preparation is local (`mmshapes` is generated; `avmnist` reads raw files from `manual_dir`, else from
`$MMLEARN_AVMNIST_DIR`, and downloads them only when neither is set; `captioned` reads your own images
and captions from `manual_dir` and a manifest, see `captioned.py`) and atomic: TFDS writes into
a temporary directory and renames it only when complete, so a failed run leaves nothing that looks
prepared, and the next call starts over. Files damaged or deleted afterwards are found before training
starts, by name, instead of as an unexplained error or silently empty records mid-run.

Datasets registered outside mmlearn (`config.imports`, see `mmlearn.registry.import_modules`) are looked
up the same way; a builder with settings (`LocalBuilder.make_config`) gets `dataset.options`.
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mmlearn.data import avmnist, captioned, mmshapes  # noqa: F401  (register the built-in datasets)
from mmlearn.data.builder import LocalBuilder
from mmlearn.data.imbalance import class_counts  # noqa: F401  (the training set's class prior)
from mmlearn.data.registry import DATASETS
from mmlearn.data.text import WordTokenizer
from mmlearn.errors import ConfigError, DataError

DATA_DIR_ENV = "MMLEARN_DATA_DIR"
_VERIFY_CHUNK = 4096  # Records read at once when checking a shard.


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir`, else `$MMLEARN_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.path.expanduser(data_dir or os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets")


def get_builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  return DATASETS.get(name)


def get_tokenizer(name: str) -> WordTokenizer | None:
  """The closed-vocabulary tokenizer whose ids a dataset's `tokens` feature holds; None without text.

  A dataset whose tokenizer is built when it is prepared (`captioned`) has none by name alone: that is
  `dataset_tokenizer(config.dataset)`, and asking here is a bug.
  """
  builder_cls = get_builder_class(name)
  load = getattr(builder_cls, "load_tokenizer", None)
  if load is not None and load.__func__ is not LocalBuilder.load_tokenizer.__func__:
    raise ValueError(f"dataset {name!r} stores its tokenizer with its prepared data: use dataset_tokenizer")
  return getattr(builder_cls, "TOKENIZER", None)


def vocab_size(name: str) -> int | None:
  tokenizer = get_tokenizer(name)
  return None if tokenizer is None else tokenizer.vocab_size


def resolve_config(
  name: str,
  config: str | None,
  *,
  options: Mapping[str, Any] | None = None,
  manual_dir: str | None = None,
  data_dir: str | None = None,
) -> tuple[type[tfds.core.GeneratorBasedBuilder], str | tfds.core.BuilderConfig | None]:
  """(builder class, the TFDS config to build): `dataset.config` and `dataset.options` resolved by the
  builder (`LocalBuilder.make_config`); a builder without settings takes no options."""
  builder_cls = get_builder_class(name)
  options = dict(options or {})
  make_config = getattr(builder_cls, "make_config", None)
  if make_config is not None:
    return builder_cls, make_config(
      config, options, manual_dir=manual_dir, data_dir=resolve_data_dir(data_dir)
    )
  if options:
    raise ConfigError(f"dataset {name!r} takes no dataset.options; got {', '.join(sorted(options))}")
  return builder_cls, config


def dataset_tokenizer(dataset: Any) -> Any:
  """The tokenizer of the dataset a config's `dataset` section names (None: no text).

  An open vocabulary is stored with the prepared dataset (`tokenizers`), so it is read from there.
  """
  builder_cls, config = resolve_config(
    dataset.name,
    dataset.config,
    options=dataset.get("options"),
    manual_dir=dataset.get("manual_dir"),
    data_dir=dataset.get("data_dir"),
  )
  load = getattr(builder_cls, "load_tokenizer", None)
  if load is None:
    return getattr(builder_cls, "TOKENIZER", None)
  return load(_prepared_dir(builder_cls, config, resolve_data_dir(dataset.get("data_dir"))))


def num_classes(info: tfds.core.DatasetInfo) -> int:
  return info.features["label"].num_classes


def load_sources(
  name: str,
  *,
  config: str | None = None,
  data_dir: str | None = None,
  splits: Sequence[str] = ("train", "validation", "test"),
  manual_dir: str | None = None,
  options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], tfds.core.DatasetInfo]:
  """Prepares dataset `name` (config `config`, default: the builder's first) if needed; opens `splits`.

  `manual_dir` holds the raw files of a dataset built from them (`avmnist`: see its module docstring for
  the layout and the `$MMLEARN_AVMNIST_DIR` fallback); generated datasets ignore it. Only a preparation
  reads it: a prepared dataset is reused whatever `manual_dir` says. `options` are the builder's own
  settings (`dataset.options`; the `captioned` builder's manifest, image shape, tokenizer, ...).

  Returns `{split: random-access source}` (`len`, `__getitem__` -> dict of numpy values) and the
  `DatasetInfo` (features, class names, split sizes). A second call reuses the prepared files.
  """
  builder_cls, config = resolve_config(
    name, config, options=options, manual_dir=manual_dir, data_dir=data_dir
  )
  tfds.disable_progress_bar()  # Progress bars would flood logs and test output; absl logs the stages.
  data_dir = resolve_data_dir(data_dir)
  _check_metadata(_prepared_dir(builder_cls, config, data_dir))
  builder = builder_cls(data_dir=data_dir, config=config, file_format="array_record")
  # Never ask GCS for a hosted copy: it is a network call, and these datasets are built here.
  download_config = tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  sources = {}
  for split in splits:
    base = split.split("[")[0]
    if base not in builder.info.splits:
      raise DataError(f"unknown split {split!r} of {name!r}; known: {', '.join(builder.info.splits)}")
    _check_shards(builder, base)
    sources[split] = builder.as_data_source(split)
  return sources, builder.info


def _prepared_dir(builder_cls: type, config: str | tfds.core.BuilderConfig | None, data_dir: str) -> str:
  """Where TFDS keeps (or will keep) the files, computed without constructing the builder.

  Constructing it already parses `dataset_info.json`, whose failure would not say which file is bad.
  """
  version = str(builder_cls.VERSION)
  if config is not None and not isinstance(config, str):  # A `BuilderConfig` made from options: its own name.
    return os.path.join(data_dir, builder_cls.name, config.name, version)
  if config is None and not builder_cls.BUILDER_CONFIGS:
    return os.path.join(data_dir, builder_cls.name, version)
  configs = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  if config is None:
    name: str = builder_cls.DEFAULT_BUILDER_CONFIG_NAME or builder_cls.BUILDER_CONFIGS[0].name
  else:
    name = config
  if name not in configs:
    raise ConfigError(f"unknown config {name!r} of dataset {builder_cls.name!r}; known: {', '.join(configs)}")
  return os.path.join(data_dir, builder_cls.name, name, version)


def _damaged(path: str, problem: str) -> DataError:
  """A prepared file whose content is wrong (truncated, corrupt, not JSON)."""
  directory = os.path.dirname(path)
  return DataError(f"prepared dataset file {path} {problem}; delete {directory} to generate it again")


def _missing(path: str) -> FileNotFoundError:
  """A prepared file deleted afterwards: an `OSError`, as any other missing file."""
  return FileNotFoundError(
    f"prepared dataset file {path} is missing; delete {os.path.dirname(path)} to generate it again"
  )


def _check_metadata(directory: str) -> None:
  if not os.path.isdir(directory):
    return  # Not prepared yet (an interrupted preparation leaves only a temporary directory).
  for filename in ("dataset_info.json", "features.json"):
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
      raise _missing(path)
    try:
      with open(path) as f:
        json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise _damaged(path, f"is not valid JSON ({e})") from None


def _check_shards(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Every shard of `split` exists, holds the recorded number of records, and reads back intact.

  A truncated array_record file opens fine and reports zero records, and a corrupted one fails only
  when the bad block is read, with a message that names no file; reading every record once (about a
  second for 26k examples) turns both into an error naming the file, before any training starts.
  """
  info = builder.info.splits[split]
  for filename, expected in zip(info.filenames, info.shard_lengths, strict=True):
    path = os.path.join(builder.data_dir, filename)
    if not os.path.isfile(path):
      raise _missing(path)
    try:
      reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
      try:
        found = reader.num_records()
        if found != expected:
          raise _damaged(path, f"holds {found} records, expected {expected}")
        for start in range(0, found, _VERIFY_CHUNK):
          reader.read(range(start, min(start + _VERIFY_CHUNK, found)))
      finally:
        reader.close()
    except RuntimeError as e:  # array_record reports I/O and checksum failures as RuntimeError.
      raise _damaged(path, f"cannot be read ({e})") from None
