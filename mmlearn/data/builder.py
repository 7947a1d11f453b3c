"""`LocalBuilder`: the TFDS boilerplate every mmlearn dataset builder needs; a new one writes only its data.

A builder is a `tfds.core.GeneratorBasedBuilder` whose files mmlearn reads by random access
(`mmlearn.data.load_sources`). Without TensorFlow and without TFDS's package metadata, each such builder
needed the same workarounds (see `mmshapes.Mmshapes` and `avmnist.Avmnist`, written before this class);
subclasses of `LocalBuilder` get them:

* `code_path` from the class's own file: TFDS 4.9.10 derives it through `importlib_resources`, which it
  does not install on Python >= 3.9, and fails for any builder inside a package (yours included).
* `_info` from `features()` and the class docstring, without the package metadata files TFDS expects.
* `manual_dir`: the raw-file directory, from the builder argument or from `dataset.manual_dir` (which
  `load_sources` passes through TFDS's `DownloadConfig`).
* `make_config`: how the config's `dataset.config` and `dataset.options` become a TFDS builder config.
  By default a builder takes no options, and one without `BUILDER_CONFIGS` takes `dataset.config` only
  at its default, "default".
* `load_tokenizer`: the tokenizer whose ids the `tokens` feature holds (default: the class's closed
  `TOKENIZER`, or None for a dataset without text).

What the pipeline reads (`mmlearn.data.pipeline`): `image` and `audio` as uint8 arrays [H, W, C], `tokens`
as int32 ids (0 = padding), `label` as a `ClassLabel`. Anything else is kept for tools (`retrieve.py`
prints scalar and text features). See `mmlearn/data/template.py` for a complete minimal builder.
"""

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from mmlearn.data.info import local_dataset_info
from mmlearn.errors import ConfigError

DEFAULT_CONFIG = "default"  # `dataset.config`'s default in mmlearn/config/schema.py.


class _DropMessages(logging.Filter):
  """While active, drops `logger`'s records whose message starts with `prefix`."""

  def __init__(self, logger: logging.Logger, prefix: str):
    super().__init__()
    self.logger, self.prefix = logger, prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefix)

  def __enter__(self):
    self.logger.addFilter(self)

  def __exit__(self, *exc: Any):
    self.logger.removeFilter(self)


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of locally prepared builders; subclasses define `VERSION`, `features()` and the generators."""

  TOKENIZER: Any = None  # A closed vocabulary's tokenizer (`text.WordTokenizer`), for datasets with text.

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if "code_path" not in cls.__dict__:
      cls.code_path = tfds.core.Path(inspect.getfile(cls))

  def __init__(self, *, manual_dir: str | None = None, **kwargs: Any):
    self._manual_dir = manual_dir
    # A config made from options (`make_config`) is not in BUILDER_CONFIGS; TFDS warns about every such
    # "custom data configuration", which here is the normal case, not news.
    with _DropMessages(logging.getLogger("absl"), "Using custom data configuration"):
      super().__init__(**kwargs)

  def features(self) -> tfds.features.FeaturesDict:
    """The stored features; plain `Tensor`s with `encoding="bytes"` for arrays (no TensorFlow needed,
    and ~100x faster to write than the default per-element protobuf ints)."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return local_dataset_info(self, doc=inspect.getdoc(type(self)) or self.name, features=self.features())

  @property
  def manual_dir(self) -> str:
    """The raw files' directory; a `ConfigError` when none was given."""
    if not self._manual_dir:
      raise ConfigError(f"dataset {self.name!r} is built from raw files: set dataset.manual_dir")
    return os.path.expanduser(os.fspath(self._manual_dir))

  def download_and_prepare(self, *, download_config: tfds.download.DownloadConfig | None = None, **kwargs):
    """Takes `download_config.manual_dir` as the raw directory unless the builder was given one."""
    if self._manual_dir is None and download_config is not None and download_config.manual_dir:
      self._manual_dir = os.fspath(download_config.manual_dir)
    return super().download_and_prepare(download_config=download_config, **kwargs)

  @classmethod
  def make_config(
    cls, config: str | None, options: Mapping[str, Any], *, manual_dir: str | None, data_dir: str
  ) -> str | tfds.core.BuilderConfig | None:
    """The TFDS config to build: `config` by name; builders with settings override this."""
    del manual_dir, data_dir
    if options:
      raise ConfigError(f"dataset {cls.name!r} takes no dataset.options; got {', '.join(sorted(options))}")
    if not cls.BUILDER_CONFIGS:
      if config not in (None, DEFAULT_CONFIG):
        raise ConfigError(f"dataset {cls.name!r} has no configs; leave dataset.config at {DEFAULT_CONFIG!r}")
      return None
    return config

  @classmethod
  def load_tokenizer(cls, prepared_dir: str) -> Any:
    """The tokenizer of the dataset prepared in `prepared_dir` (None: the dataset has no text)."""
    del prepared_dir
    return cls.TOKENIZER
