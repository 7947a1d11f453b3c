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
* Preparation by `mmlearn.data.prepare` instead of TFDS's writer: no TensorFlow at any size, memory
  independent of the dataset's size, resumable shard by shard, one preparation at a time. A builder
  writes `_split_generators` as for TFDS (its examples, in order), or `split_plans` to have examples
  encoded in worker processes (`prepare_workers`, from `dataset.workers`), and `write_extra` for files
  it keeps beside the records.
* `decoders`: features stored encoded (image or wav bytes, `mmlearn.data.media`) and how each decodes;
  the pipeline decodes them where it reads examples (`mmlearn.data.preprocess.ExampleView`).

What the pipeline reads (`mmlearn.data.pipeline`): `image` and `audio` as uint8 arrays [H, W, C] or their
encoded bytes (with a decoder), `caption` as text (tokenized by the configured tokenizer) or `tokens` as
int32 ids (0 = padding), `label` as a `ClassLabel`. Anything else is kept for tools (`retrieve.py`
prints scalar and text features). See `mmlearn/data/template.py` for a complete minimal builder.
"""

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data import prepare
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
  OPTIONS: Mapping[str, Any] = {}  # The `dataset.options` `make_config` takes, with their defaults.

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if "code_path" not in cls.__dict__:
      cls.code_path = tfds.core.Path(inspect.getfile(cls))

  def __init__(self, *, manual_dir: str | None = None, prepare_workers: int = 0, **kwargs: Any):
    self._manual_dir = manual_dir
    self.prepare_workers = prepare_workers  # Processes encoding examples (`split_plans`); 0: this one.
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

  EXAMPLES_PER_SHARD = prepare.EXAMPLES_PER_SHARD

  def download_and_prepare(self, *, download_config: tfds.download.DownloadConfig | None = None, **kwargs):
    """Prepares the dataset with `mmlearn.data.prepare` unless it is prepared; `download_config`'s
    `manual_dir` is the raw directory unless the builder was given one."""
    del kwargs
    manual_dir = getattr(download_config, "manual_dir", None)
    if self._manual_dir is None and manual_dir:
      self._manual_dir = os.fspath(manual_dir)
    prepared = os.fspath(self.data_dir)
    if prepare.is_prepared(prepared):
      return
    # Hosts of one job share the directory: all but the first to lock it wait, then find it prepared.
    with prepare.exclusive(prepared, wait=jax.process_count() > 1):
      if prepare.is_prepared(prepared):  # Another process prepared it while this one waited to start.
        return
      plans = self.split_plans(
        self._make_download_manager(None, download_config or tfds.download.DownloadConfig())
      )
      prepare.write_dataset(
        self,
        plans,
        prepared_dir=prepared,
        write_extra=self.write_extra,
        examples_per_shard=self.EXAMPLES_PER_SHARD,
        workers=self.prepare_workers,
        description=f"{self.name} {self.builder_config.name if self.builder_config else ''}".strip(),
      )

  def split_plans(self, dl_manager: tfds.download.DownloadManager) -> dict[str, prepare.SplitPlan]:
    """Every split's examples in order: by default TFDS's `_split_generators` (examples made in this
    process); a builder whose examples are costly to make gives work items and an `encode` instead."""
    return {
      split: prepare.SplitPlan(items=(example for _, example in generator))
      for split, generator in self._split_generators(dl_manager).items()
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """TFDS's form of `split_plans` (TFDS requires it), for a builder that writes `split_plans`."""
    if type(self).split_plans is LocalBuilder.split_plans:
      raise NotImplementedError(f"{type(self).__name__} writes neither split_plans nor _split_generators")
    return {split: self._generate_examples(plan) for split, plan in self.split_plans(dl_manager).items()}

  def _generate_examples(self, *args: Any, **kwargs: Any):
    """`(index, example)` of a `split_plans` plan (TFDS requires it; builders override it with theirs)."""
    plan: prepare.SplitPlan = args[0]
    yield from enumerate(plan.items if plan.encode is None else map(plan.encode, plan.items))

  def write_extra(self, directory: str) -> None:
    """Files the builder keeps beside its records (a tokenizer, a layout), written into `directory`."""
    del directory

  def decoders(self) -> dict[str, Callable[[Any], np.ndarray]]:
    """Features stored encoded -> their decoder (bytes -> uint8 [H, W, C]; picklable, for the pipeline's
    worker processes). Default: none, every array is stored decoded."""
    return {}

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
