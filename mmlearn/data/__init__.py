"""Datasets by name: prepare a TFDS builder once into `data_dir`, then read its splits by random access.

Preparation is local (`mmshapes` is generated; `avmnist` reads raw files from `manual_dir`, else from
`$MMLEARN_AVMNIST_DIR`, and downloads them only when neither is set; `captioned` reads your own images
and captions from `manual_dir` and a manifest, see `captioned.py`), written by `mmlearn.data.prepare`
without TensorFlow: resumable, one preparation at a time, and renamed into place only when complete, so
a failed run leaves nothing that looks prepared. Files damaged or deleted afterwards are found before
training starts, by name, instead of as an unexplained error or silently empty records mid-run.

Examples are read as stored, or through `preprocess.ExampleView` (`Reading`, from `config.dataset`):
encoded media decoded, captions tokenized by `dataset.tokenizer`, images sized and normalised.

Datasets registered outside mmlearn (`config.imports`, see `mmlearn.registry.import_modules`) are looked
up the same way; a builder with settings (`LocalBuilder.make_config`) gets `dataset.options`.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mmlearn.data import avmnist, captioned, mmshapes, prepare, tarshards, tokenizer_choice  # noqa: F401  (built-ins)
from mmlearn.data.builder import LocalBuilder
from mmlearn.data.imbalance import class_counts  # noqa: F401  (the training set's class prior)
from mmlearn.data.media import RESAMPLING
from mmlearn.data.preprocess import DEFAULT_MEAN, DEFAULT_STD, ExampleView
from mmlearn.data.registry import DATASETS
from mmlearn.data.tokenizer_choice import TokenizerChoice
from mmlearn.errors import ConfigError, DataError

DATA_DIR_ENV = "MMLEARN_DATA_DIR"
_VERIFY_CHUNK = 4096  # Records read at once when checking a shard.


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir`, else `$MMLEARN_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.path.expanduser(data_dir or os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets")


def get_builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  return DATASETS.get(name)


def get_tokenizer(name: str) -> Any:
  """The closed-vocabulary tokenizer of a dataset's stored `tokens` (its `TOKENIZER`; None without).

  Other datasets' tokenizers depend on the config (`dataset.tokenizer`): that is `dataset_tokenizer`.
  """
  return getattr(get_builder_class(name), "TOKENIZER", None)


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


@dataclasses.dataclass(frozen=True)
class Reading:
  """How a dataset's examples are read (`config.dataset`): the tokenizer of its captions, its images'
  size and normalisation (`preprocess.ExampleView`), and the processes that prepare and decode it."""

  tokenizer: TokenizerChoice = TokenizerChoice()
  max_tokens: int = 16
  image_size: int = 0
  image_mean: tuple[float, ...] = DEFAULT_MEAN
  image_std: tuple[float, ...] = DEFAULT_STD
  image_resample: str = "bilinear"
  image_crop: bool = True
  workers: int = 0

  @classmethod
  def from_config(cls, dataset: Any) -> "Reading":
    if dataset.image_resample not in RESAMPLING:
      raise ConfigError(
        f"config key 'dataset.image_resample' is {dataset.image_resample!r}; known: {', '.join(RESAMPLING)}"
      )
    return cls(
      tokenizer=TokenizerChoice.from_config(dataset),
      max_tokens=dataset.max_tokens,
      image_size=dataset.image_size,
      image_mean=tuple(dataset.image_mean),
      image_std=tuple(dataset.image_std),
      image_resample=dataset.image_resample,
      image_crop=dataset.image_crop,
      workers=dataset.workers,
    )


def dataset_tokenizer(dataset: Any) -> Any:
  """The vocabulary of the dataset a config's `dataset` section names (None: no text): the tokenizer
  `dataset.tokenizer` names (`tokenizer_choice`); one built from captions reads the training split."""
  reading = Reading.from_config(dataset)
  builder_cls = get_builder_class(dataset.name)
  if not reading.tokenizer.name and getattr(builder_cls, "TOKENIZER", None) is not None:
    return builder_cls.TOKENIZER  # Known without reading the dataset (a closed vocabulary).
  builder = _builder(
    dataset.name,
    dataset.config,
    options=dataset.get("options"),
    manual_dir=dataset.get("manual_dir"),
    data_dir=dataset.get("data_dir"),
    reading=reading,
  )
  features = builder.info.features
  if not reading.tokenizer.name and ("caption" not in features or "tokens" in features):
    return _own_tokenizer(builder)  # Stored ids (or no text): no captions to read.
  train = _open_splits(builder, dataset.get("manual_dir"), ("train",))["train"]
  return _tokenizers(builder, reading, train)[0]


def prompt_tokenizer(dataset: Any) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
  """A function tokenizing texts (prompts) exactly as the pipeline tokenizes the captions of the dataset
  a config's `dataset` section names: its `dataset_tokenizer`, cut or padded to `dataset.max_tokens` with
  a mask (`pipeline.tokenize`). The tokenizer is resolved at the first call; a dataset without text has
  none to call (a `ConfigError`)."""

  def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from mmlearn.data import pipeline  # noqa: PLC0415 (the pipeline imports this package's modules)

    tokenizer = dataset_tokenizer(dataset)
    if tokenizer is None:
      raise ConfigError(f"dataset {dataset.name!r} has no text, so no tokenizer to encode prompts with")
    return pipeline.tokenize(tokenizer, texts, dataset.max_tokens)

  return tokenize


def _own_tokenizer(builder: tfds.core.DatasetBuilder) -> Any:
  """The tokenizer of the dataset's stored `tokens` (None without)."""
  if not isinstance(builder, LocalBuilder) or "tokens" not in builder.info.features:
    return None
  return builder.load_tokenizer(os.fspath(builder.data_dir))


def _tokenizers(builder: tfds.core.DatasetBuilder, reading: Reading, train: Any) -> tuple[Any, Any]:
  """(vocabulary, the tokenizer the pipeline runs on captions): `tokenizer_choice.resolve`, `train` being
  the training split's records."""
  features = builder.info.features
  return tokenizer_choice.resolve(
    reading.tokenizer,
    own=_own_tokenizer(builder),
    stores_tokens="tokens" in features,
    has_captions="caption" in features,
    prepared_dir=os.fspath(builder.data_dir),
    train=train,
    max_tokens=reading.max_tokens,
  )


def num_classes(info: tfds.core.DatasetInfo) -> int:
  return info.features["label"].num_classes


def class_label_names(info: tfds.core.DatasetInfo) -> dict[str, tuple[str, ...]]:
  """The class names of each class-label feature (`{"label": ("red_circle", ...), "shape": ...}`)."""
  return {
    name: tuple(feature.names)
    for name, feature in info.features.items()
    if isinstance(feature, tfds.features.ClassLabel)
  }


def load_sources(
  name: str,
  *,
  config: str | None = None,
  data_dir: str | None = None,
  splits: Sequence[str] = ("train", "validation", "test"),
  manual_dir: str | None = None,
  options: Mapping[str, Any] | None = None,
  reading: Reading = Reading(),
) -> tuple[dict[str, Any], tfds.core.DatasetInfo]:
  """Prepares dataset `name` (config `config`, default: the builder's first) if needed; opens `splits`.

  `manual_dir` holds the raw files of a dataset built from them (`avmnist`: see its module docstring for
  the layout and the `$MMLEARN_AVMNIST_DIR` fallback); generated datasets ignore it. Only a preparation
  reads it: a prepared dataset is reused whatever `manual_dir` says. `options` are the builder's own
  settings (`dataset.options`; the `captioned` builder's manifest, image shape, ...). `reading` says how
  examples are read: a dataset storing encoded media or captions to tokenize, or read at another image
  size or normalisation, is read through `preprocess.ExampleView`; any other as TFDS stores it.

  Returns `{split: random-access source}` (`len`, `__getitem__` -> dict of numpy values) and the
  `DatasetInfo` (features, class names, split sizes). A second call reuses the prepared files.
  """
  builder = _builder(name, config, options=options, manual_dir=manual_dir, data_dir=data_dir, reading=reading)
  sources = _open_splits(builder, manual_dir, splits)
  train = sources["train"] if "train" in sources else _open_splits(builder, manual_dir, ("train",))["train"]
  return _views(builder, sources, reading, train), builder.info


def _builder(
  name: str,
  config: str | None,
  *,
  options: Mapping[str, Any] | None,
  manual_dir: str | None,
  data_dir: str | None,
  reading: Reading,
) -> tfds.core.DatasetBuilder:
  """Dataset `name`'s builder for `config` and `options` (not prepared yet, maybe)."""
  builder_cls, resolved = resolve_config(
    name, config, options=options, manual_dir=manual_dir, data_dir=data_dir
  )
  tfds.disable_progress_bar()  # Progress bars would flood logs and test output; absl logs the stages.
  data_dir = resolve_data_dir(data_dir)
  _check_metadata(_prepared_dir(builder_cls, resolved, data_dir))
  kwargs: dict[str, Any] = (
    {"prepare_workers": reading.workers} if issubclass(builder_cls, LocalBuilder) else {}
  )
  return builder_cls(data_dir=data_dir, config=resolved, file_format="array_record", **kwargs)


def _open_splits(
  builder: tfds.core.DatasetBuilder, manual_dir: str | None, splits: Sequence[str]
) -> dict[str, Any]:
  """{split: its records}: read in place by a builder that reads its raw files directly (its `direct`
  option), else prepared first if need be and read by random access."""
  if getattr(builder.builder_config, "direct", False):
    return builder.direct_sources(splits)
  if not prepare.is_prepared(os.fspath(builder.data_dir)):
    # Never ask GCS for a hosted copy: it is a network call, and these datasets are built here.
    download_config = tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
  sources = {}
  for split in splits:
    base = split.split("[")[0]
    if base not in builder.info.splits:
      known = ", ".join(builder.info.splits)
      raise DataError(f"unknown split {split!r} of {builder.name!r}; known: {known}")
    _check_shards(builder, base)
    sources[split] = builder.as_data_source(split)
  return sources


def _views(
  builder: tfds.core.DatasetBuilder, sources: dict[str, Any], reading: Reading, train: Any
) -> dict[str, Any]:
  """`sources` as the pipeline reads them: through an `ExampleView` when anything needs doing."""
  decoders = builder.decoders() if isinstance(builder, LocalBuilder) else {}
  _, tokenize = _tokenizers(builder, reading, train)
  normalised = (reading.image_mean, reading.image_std) != (DEFAULT_MEAN, DEFAULT_STD)
  if not (decoders or tokenize or reading.image_size or normalised):
    return sources
  view = functools.partial(
    ExampleView,
    decoders=decoders,
    tokenizer=tokenize,
    image_size=reading.image_size,
    image_mean=reading.image_mean,
    image_std=reading.image_std,
    image_resample=reading.image_resample,
    image_crop=reading.image_crop,
  )
  return {split: view(source) for split, source in sources.items()}


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
