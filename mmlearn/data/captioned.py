"""captioned: your own images and captions (optionally labels and audio), from a folder and a manifest.

    config.dataset.name = "captioned"
    config.dataset.manual_dir = "/data/pets"      # the manifest's paths are relative to this directory
    config.dataset.config = "pets"                # your name for this dataset (part of its prepared path)
    config.dataset.options = {"manifest": "manifest.csv", "image_shape": (64, 64, 3)}

The manifest is a UTF-8 CSV file with a header row, or a JSON-lines file (`.jsonl`) of objects, with the
columns `image` (a path) and `caption`, and optionally `label` (any string; class ids follow the sorted
class names), `audio` (a path to an 8 kHz mono 16-bit wav) and `split` (train / validation / test). A
column given for one row is needed for all. The same image may appear with several captions (COCO has
five an image); a row repeated whole (same image, caption, label, audio and split) is an error naming
both lines, as it would silently weigh that pair twice.

Options (`dataset.options`):

    manifest          "manifest.csv"     the manifest's path, relative to `manual_dir`
    image_shape       (32, 32, 3)        (height, width, 1 or 3): every image decoded, converted to gray
                                         or RGB and resized (bilinear) to it; None keeps every image's own
                                         bytes and size (checked to decode), for `dataset.image_size`
    split_fractions   (0.8, 0.1, 0.1)    train / validation / test, without a `split` column
    split_seed        0                  the permutation behind those fractions

What is stored (the pipeline decodes it where it reads examples: `Captioned.decoders`):

* `image`: encoded bytes. With an `image_shape`, the image resized once at preparation and re-encoded
  (PNG for PNG and other lossless sources, so its pixels are exactly the resized ones; JPEG at
  `media.JPEG_QUALITY` for JPEG sources, which are lossy already): `mmlearn.data.media.prepared_image`.
  16-bit gray images keep their top 8 bits. `image_file` is the manifest's path.
* `caption`: the text as given. It is tokenized by the pipeline (`config.dataset.tokenizer`), so one
  prepared dataset serves any tokenizer; a caption the tokenizer finds no words in is its concern.
* `label`: a `ClassLabel` over the sorted class names, when the manifest has labels.
* `audio`: the wav file's bytes (`audio_file` its path), decoded into AV-MNIST's 112 x 112 uint8
  log-power spectrogram (`spectrogram.log_power_spectrogram`) on a scale fitted to the training
  recordings at preparation and stored beside the records (`captioned.json`), so every split reads on
  the training split's scale.

Splits: the `split` column when there is one; otherwise the seeded rule below, so the same manifest and
options always give the same splits: the row indices 0..N-1 are permuted by
`numpy.random.default_rng(split_seed).permutation(N)`; the first `round(N * train)` go to train, the next
`round(N * validation)` to validation, the rest to test (`split_fractions`). Either way each split keeps
manifest order: element `i` of a split is its `i`-th row. Every split needs at least one row.

Preparation encodes images and recordings in `dataset.workers` processes (`prepare_workers`; the records
are the same whatever their number). Bad input is a one-line `DataError` naming the manifest line and
the file: a manifest that is not UTF-8 (with the line and byte offset), a missing or undecodable image
or recording, a repeated row.

The prepared directory is `<data_dir>/captioned/<dataset.config>-<hash of the options>/<version>`: other
options prepare anew, the same ones reuse it. The manifest's digest is stored with it; a manifest changed
since is an error (delete the prepared directory or pick another `dataset.config`). An image changed in
place under the same name is not noticed: delete the prepared directory after editing images.
"""

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data import media, prepare, spectrogram
from mmlearn.data.builder import DEFAULT_CONFIG, LocalBuilder
from mmlearn.data.manifest import Row, file_digest, manifest_path, read_manifest, split_rows
from mmlearn.data.registry import DATASETS
from mmlearn.errors import ConfigError, DataError

LAYOUT = "captioned.json"  # What the manifest determined (class names, audio scale), stored with the records.
OPTIONS = {  # Option -> default; `dataset.options` may set any of them.
  "manifest": "manifest.csv",
  "image_shape": (32, 32, 3),
  "split_fractions": (0.8, 0.1, 0.1),
  "split_seed": 0,
}
# Options of version 1 that moved to the dataset section: the pipeline tokenizes captions now.
MOVED = {"tokenizer": "tokenizer", "min_count": "min_count", "vocab_size": "vocab_size"}


@dataclasses.dataclass(eq=False)
class CaptionedConfig(tfds.core.BuilderConfig):
  """The options (see `OPTIONS`), and what the manifest determined: class names (None: no labels),
  whether there is audio, and the manifest's digest."""

  manifest: str = OPTIONS["manifest"]
  image_shape: tuple[int, int, int] | None = OPTIONS["image_shape"]
  split_fractions: tuple[float, float, float] = OPTIONS["split_fractions"]
  split_seed: int = OPTIONS["split_seed"]
  class_names: tuple[str, ...] | None = None
  has_audio: bool = False
  manifest_digest: str = ""


class Item(NamedTuple):
  """One row's work at preparation: plain data, so that it pickles to the encoding processes."""

  where: str
  image: str  # As the manifest names it (stored as `image_file`) ...
  image_path: str  # ... and where it is.
  caption: str
  label: str | None
  audio: str | None
  audio_path: str | None


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """`OPTIONS` updated with `options`, normalised (tuples) and checked; errors name the option."""
  moved = sorted(set(options) & set(MOVED))
  if moved:
    raise ConfigError(
      f"dataset.options {moved} of 'captioned' are now config.dataset."
      f"{', config.dataset.'.join(MOVED[k] for k in moved)} (captions are tokenized by the pipeline)"
    )
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ConfigError(f"unknown dataset.options {unknown} of 'captioned'; known: {', '.join(OPTIONS)}")
  settings = {**OPTIONS, **options}
  for key in ("image_shape", "split_fractions"):
    settings[key] = None if settings[key] is None else tuple(settings[key])
  shape = settings["image_shape"]
  if shape is not None and (
    len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[2] not in (1, 3)
  ):
    raise ConfigError(f"dataset.options.image_shape must be (height, width, 1 or 3) or None, got {shape}")
  fractions = settings["split_fractions"]
  if fractions is None or len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ConfigError(
      f"dataset.options.split_fractions must be 3 fractions (train, validation, test) summing to 1, "
      f"got {fractions}"
    )
  seed = settings["split_seed"]
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise ConfigError(f"dataset.options.split_seed must be an integer >= 0, got {seed!r}")
  return settings


def config_name(name: str, settings: Mapping[str, Any]) -> str:
  """`<name>-<10 hex digits of the options>`: a prepared directory per distinct set of options."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  return f"{name}-{digest}"


def read_file(path: str, what: str, where: str) -> bytes:
  """A media file's bytes; a missing one is an error naming the manifest line (`where`) and the file."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError(f"{where}: {what} {path} is missing") from None


def read_image(path: str, shape: tuple[int, int, int], where: str) -> np.ndarray:
  """uint8 [H, W, C]: decoded, converted to RGB or gray, resized (bilinear). For builders that store
  arrays (`template.py`); `captioned` stores the encoded bytes (`encode_example`)."""
  array = media.decode_image(read_file(path, "image", where), shape[2], f"{where}: image {path}")
  return media.resize(array, shape[0], shape[1])


def read_audio(path: str, where: str) -> np.ndarray:
  """float32 [NUM_SAMPLES]: AV-MNIST's 1 s window of an 8 kHz mono 16-bit wav."""
  data = read_file(path, "audio", where)
  return spectrogram.fit_to_window(spectrogram.read_wav_bytes(data, f"{where}: audio {path}"))[0]


def encode_example(item: Item, image_shape: tuple[int, int, int] | None) -> dict[str, Any]:
  """One row's example (`features()`), from its files; runs in the preparation's worker processes.

  A recording is decoded here too, though stored as it is, so that a damaged one fails the preparation
  (naming its line) rather than a training run later.
  """
  image = read_file(item.image_path, "image", item.where)
  example = {
    "image": media.prepared_image(image, image_shape, f"{item.where}: image {item.image_path}"),
    "image_file": item.image,
    "caption": item.caption,
  }
  if item.label is not None:
    example["label"] = item.label
  if item.audio is not None and item.audio_path is not None:
    audio = read_file(item.audio_path, "audio", item.where)
    spectrogram.read_wav_bytes(audio, f"{item.where}: audio {item.audio_path}")
    example["audio"], example["audio_file"] = audio, item.audio
  return example


@dataclasses.dataclass(frozen=True)
class AudioDecoder:
  """wav bytes -> uint8 [112, 112, 1]: the log-power spectrogram of the first second, quantised on the
  scale fitted to the training recordings at preparation (`low` dB -> 0, `high` dB -> 255). Plain
  numbers, so that it pickles to the pipeline's worker processes."""

  low: float
  high: float

  def __call__(self, data: bytes) -> np.ndarray:
    wave = spectrogram.fit_to_window(spectrogram.read_wav_bytes(data, "a stored recording"))[0]
    scale = spectrogram.SpectrogramScale(low=self.low, high=self.high)
    return scale.quantise(spectrogram.log_power_spectrogram(wave[None]))[0]


@DATASETS.register("captioned")
class Captioned(LocalBuilder):
  """Your own images and captions from a manifest (see the module docstring); element `i` of a split is
  its `i`-th manifest row."""

  VERSION = tfds.core.Version("2.0.0")
  OPTIONS = OPTIONS
  _audio_scale: spectrogram.SpectrogramScale | None = None  # Fitted by `split_plans`, for `write_extra`.
  RELEASE_NOTES = {
    "1.0.0": "First release.",
    "2.0.0": "Images and audio stored encoded (PNG/JPEG, wav), decoded by the pipeline; image_shape "
    "None keeps the original images. Captions as text only: the options tokenizer, min_count and "
    "vocab_size moved to config.dataset. Repeated rows and non-UTF-8 manifests are errors.",
  }

  @classmethod
  def make_config(
    cls, config: str | None, options: Mapping[str, Any], *, manual_dir: str | None, data_dir: str
  ) -> CaptionedConfig:
    """The config of `options`, with what the manifest determines; read back from the prepared directory
    when there is one (so a prepared dataset reads without its raw files)."""
    settings = check_options(options)
    name = config_name(config or DEFAULT_CONFIG, settings)
    prepared = os.path.join(data_dir, cls.name, name, str(cls.VERSION))
    manifest = manifest_path(manual_dir, settings["manifest"]) if manual_dir else None
    layout_path = os.path.join(prepared, LAYOUT)
    if os.path.isfile(layout_path):
      with open(layout_path) as f:
        layout = json.load(f)
      if manifest and os.path.isfile(manifest) and file_digest(manifest) != layout["manifest_digest"]:
        raise DataError(
          f"manifest {manifest} changed since {prepared} was prepared from it; delete that directory "
          "to prepare it again, or set another dataset.config"
        )
    elif manifest is None:
      raise ConfigError(
        "dataset 'captioned' reads your files: set dataset.manual_dir (the manifest's folder)"
      )
    else:
      rows = read_manifest(manifest)
      labels = sorted({r.label for r in rows if r.label is not None}) if rows[0].label is not None else None
      layout = {"class_names": labels, "has_audio": rows[0].audio is not None}
      layout["manifest_digest"] = file_digest(manifest)
    class_names = layout["class_names"]
    return CaptionedConfig(
      name=name,
      description=f"{config or DEFAULT_CONFIG}: {settings['manifest']}",
      **settings,
      class_names=None if class_names is None else tuple(class_names),
      has_audio=layout["has_audio"],
      manifest_digest=layout["manifest_digest"],
    )

  def features(self) -> tfds.features.FeaturesDict:
    config = self.builder_config
    features = {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # Encoded (`decoders`).
      "image_file": tfds.features.Text(),
      "caption": tfds.features.Text(),
    }
    if config.class_names is not None:
      features["label"] = tfds.features.ClassLabel(names=config.class_names)
    if config.has_audio:
      features["audio"] = tfds.features.Tensor(shape=(), dtype=np.object_)  # The wav file's bytes.
      features["audio_file"] = tfds.features.Text()
    return tfds.features.FeaturesDict(features)

  def decoders(self) -> dict[str, Callable[[Any], np.ndarray]]:
    """The image decoder (the prepared shape, or any size when images are kept as they are) and, with
    audio, the spectrogram on the scale stored at preparation (so the builder must be prepared)."""
    shape = self.builder_config.image_shape
    decoders: dict[str, Callable[[Any], np.ndarray]] = {
      "image": media.ImageDecoder(shape[2] if shape else 3, shape)
    }
    if self.builder_config.has_audio:
      path = os.path.join(os.fspath(self.data_dir), LAYOUT)
      if not os.path.isfile(path):
        raise DataError(f"dataset {self.data_dir} is not prepared yet: its audio scale is fitted when it is")
      with open(path) as f:
        low, high = json.load(f)["audio_scale"]
      decoders["audio"] = AudioDecoder(low=low, high=high)
    return decoders

  def split_plans(self, dl_manager: tfds.download.DownloadManager) -> dict[str, prepare.SplitPlan]:
    """Each split's rows as work items for `encode_example` (run in `prepare_workers` processes), in
    manifest order; the audio scale is fitted here first, on the training recordings."""
    del dl_manager
    config = self.builder_config
    manifest = manifest_path(self.manual_dir, config.manifest)
    rows = read_manifest(manifest)
    if file_digest(manifest) != config.manifest_digest:
      raise DataError(f"manifest {manifest} changed while it was read; prepare again")
    splits = split_rows(rows, config.split_fractions, config.split_seed)
    if config.has_audio:
      waves = np.stack([read_audio(self._path(r.audio), r.where) for r in splits["train"] if r.audio])
      self._audio_scale = spectrogram.fit_spectrogram_scale(waves)
    encode = functools.partial(encode_example, image_shape=config.image_shape)
    return {
      split: prepare.SplitPlan(items=[self._item(r) for r in part], encode=encode, num_examples=len(part))
      for split, part in splits.items()
    }

  def write_extra(self, directory: str) -> None:
    """What the manifest determined and the audio scale, beside the records."""
    layout = {k: getattr(self.builder_config, k) for k in ("class_names", "has_audio", "manifest_digest")}
    scale = self._audio_scale
    layout["audio_scale"] = None if scale is None else [scale.low, scale.high]
    with open(os.path.join(directory, LAYOUT), "w") as f:
      json.dump(layout, f)

  def _path(self, relative: str) -> str:
    return os.path.join(self.manual_dir, os.path.expanduser(relative))

  def _item(self, row: Row) -> Item:
    audio_path = None if row.audio is None else self._path(row.audio)
    return Item(row.where, row.image, self._path(row.image), row.caption, row.label, row.audio, audio_path)
