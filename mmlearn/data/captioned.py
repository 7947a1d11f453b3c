"""captioned: your own images and captions (optionally labels and audio), from a folder and a manifest.

    config.dataset.name = "captioned"
    config.dataset.manual_dir = "/data/pets"      # the manifest's paths are relative to this directory
    config.dataset.config = "pets"                # your name for this dataset (part of its prepared path)
    config.dataset.options = {"manifest": "manifest.csv", "image_shape": (64, 64, 3)}

The manifest is a CSV file with a header row, or a JSON-lines file (`.jsonl`) of objects, with the
columns `image` (a path) and `caption`, and optionally `label` (any string; class ids follow the sorted
class names), `audio` (a path to an 8 kHz mono 16-bit wav, turned into AV-MNIST's 112 x 112 log-power
spectrogram: see `spectrogram.log_power_spectrogram`) and `split` (train / validation / test). Images are
decoded with Pillow, converted to RGB (or gray for 1 channel) and resized (bilinear) to `image_shape`.

Splits: the `split` column when there is one; otherwise the seeded rule below, so the same manifest and
options always give the same splits: the row indices 0..N-1 are permuted by
`numpy.random.default_rng(split_seed).permutation(N)`; the first `round(N * train)` go to train, the next
`round(N * validation)` to validation, the rest to test (`split_fractions`), each kept in manifest order.
Every split needs at least one row.

Text: a tokenizer is built from the training split's captions only (`tokenizer`: "word" keeps words seen
`min_count` times, else `<unk>`; "subword" trains a sentencepiece model of at most `vocab_size` pieces;
see `tokenizers`) and stored beside the records. The audio scale is likewise fitted on training audio.

The prepared directory is `<data_dir>/captioned/<dataset.config>-<hash of the options>/<version>`: other
options prepare anew, the same ones reuse it. The manifest's digest is stored with it; a manifest changed
since is an error (delete the prepared directory or pick another `dataset.config`). An image changed in
place under the same name is not noticed: delete the prepared directory after editing images.
"""

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data import spectrogram, tokenizers
from mmlearn.data.builder import DEFAULT_CONFIG, LocalBuilder
from mmlearn.data.progress import Progress
from mmlearn.data.registry import DATASETS
from mmlearn.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
COLUMNS = ("image", "caption", "label", "audio", "split")
REQUIRED = ("image", "caption")
LAYOUT = "captioned.json"  # What the manifest determined (class names, audio), stored with the records.
OPTIONS = {  # Option -> default; `dataset.options` may set any of them.
  "manifest": "manifest.csv",
  "image_shape": (32, 32, 3),
  "tokenizer": "word",
  "min_count": 1,
  "vocab_size": 1000,
  "split_fractions": (0.8, 0.1, 0.1),
  "split_seed": 0,
}


@dataclasses.dataclass(eq=False)
class CaptionedConfig(tfds.core.BuilderConfig):
  """The options (see `OPTIONS`), and what the manifest determined: class names (None: no labels),
  whether there is audio, and the manifest's digest."""

  manifest: str = OPTIONS["manifest"]
  image_shape: tuple[int, int, int] = OPTIONS["image_shape"]
  tokenizer: str = OPTIONS["tokenizer"]
  min_count: int = OPTIONS["min_count"]
  vocab_size: int = OPTIONS["vocab_size"]
  split_fractions: tuple[float, float, float] = OPTIONS["split_fractions"]
  split_seed: int = OPTIONS["split_seed"]
  class_names: tuple[str, ...] | None = None
  has_audio: bool = False
  manifest_digest: str = ""


@dataclasses.dataclass
class Row:
  where: str  # `manifest:line`, for error messages.
  image: str
  caption: str
  label: str | None = None
  audio: str | None = None
  split: str | None = None


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """`OPTIONS` updated with `options`, normalised (tuples) and checked; errors name the option."""
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ConfigError(f"unknown dataset.options {unknown} of 'captioned'; known: {', '.join(OPTIONS)}")
  settings = {**OPTIONS, **options}
  for key in ("image_shape", "split_fractions"):
    settings[key] = tuple(settings[key])
  shape = settings["image_shape"]
  if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[2] not in (1, 3):
    raise ConfigError(f"dataset.options.image_shape must be (height, width, 1 or 3), got {shape}")
  fractions = settings["split_fractions"]
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ConfigError(
      f"dataset.options.split_fractions must be 3 fractions (train, validation, test) summing to 1, "
      f"got {fractions}"
    )
  if settings["tokenizer"] not in tokenizers.KINDS:
    raise ConfigError(
      f"unknown dataset.options.tokenizer {settings['tokenizer']!r}; known: {', '.join(tokenizers.KINDS)}"
    )
  for key in ("min_count", "vocab_size", "split_seed"):
    if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 0:
      raise ConfigError(f"dataset.options.{key} must be an integer >= 0, got {settings[key]!r}")
  return settings


def config_name(name: str, settings: Mapping[str, Any]) -> str:
  """`<name>-<10 hex digits of the options>`: a prepared directory per distinct set of options."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  return f"{name}-{digest}"


def manifest_path(manual_dir: str, manifest: str) -> str:
  return os.path.join(os.path.expanduser(manual_dir), os.path.expanduser(manifest))


def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _records(path: str) -> list[tuple[str, dict[str, Any]]]:
  """(`path:line`, raw row) of a CSV (header row) or JSON-lines manifest."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest {path} is missing")
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError as e:
          raise DataError(f"{path}:{number}: not a JSON object ({e})") from None
        if not isinstance(record, dict):
          raise DataError(f"{path}:{number}: not a JSON object, got {type(record).__name__}")
        rows.append((f"{path}:{number}", record))
    else:
      reader = csv.DictReader(f)
      columns = reader.fieldnames or []
      unknown = [c for c in columns if c not in COLUMNS]
      if unknown or not set(REQUIRED) <= set(columns):
        raise DataError(
          f"{path}: header {columns} must name {', '.join(REQUIRED)} and only {', '.join(COLUMNS)}"
        )
      for record in reader:
        if None in record or None in record.values():
          raise DataError(f"{path}:{reader.line_num}: {len(columns)} columns expected")
        rows.append((f"{path}:{reader.line_num}", record))
  if not rows:
    raise DataError(f"manifest {path} has no rows")
  return rows


def read_manifest(path: str) -> list[Row]:
  """The manifest's rows, each checked: required columns present and non-empty, known columns only."""
  rows = []
  for where, record in _records(path):
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
      raise DataError(f"{where}: unknown column(s) {unknown}; known: {', '.join(COLUMNS)}")
    values = {k: v if isinstance(v, str) else str(v) for k, v in record.items() if v is not None}
    for column in REQUIRED:
      if not values.get(column, "").strip():
        raise DataError(f"{where}: no {column!r}")
    split = values.get("split") or None
    if split is not None and split not in SPLITS:
      raise DataError(f"{where}: split {split!r} is none of {', '.join(SPLITS)}")
    label, audio = values.get("label") or None, values.get("audio") or None
    rows.append(Row(where, values["image"], values["caption"], label=label, audio=audio, split=split))
  for column in ("label", "audio", "split"):
    given = [getattr(r, column) is not None for r in rows]
    if any(given) and not all(given):
      raise DataError(f"{rows[given.index(False)].where}: no {column!r}, which other rows have")
  return rows


def split_rows(rows: list[Row], fractions: tuple[float, ...], seed: int) -> dict[str, list[Row]]:
  """The `split` column's splits, else the seeded rule of the module docstring."""
  if rows[0].split is not None:
    splits = {split: [r for r in rows if r.split == split] for split in SPLITS}
  else:
    order = np.random.default_rng(seed).permutation(len(rows))
    n_train = round(len(rows) * fractions[0])
    n_validation = round(len(rows) * fractions[1])
    parts = np.split(order, [n_train, n_train + n_validation])
    splits = {split: [rows[i] for i in np.sort(part)] for split, part in zip(SPLITS, parts, strict=True)}
  empty = [split for split, part in splits.items() if not part]
  if empty:
    sizes = ", ".join(f"{s} {len(p)}" for s, p in splits.items())
    raise DataError(f"the manifest's {len(rows)} rows leave no {' or '.join(empty)} examples ({sizes})")
  return splits


def read_image(path: str, shape: tuple[int, int, int], where: str) -> np.ndarray:
  """uint8 [H, W, C]: decoded, converted to RGB or gray, resized (bilinear)."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (Pillow comes with matplotlib)

  try:
    with Image.open(path) as image:
      image = image.convert("RGB" if shape[2] == 3 else "L").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
      )
  except FileNotFoundError:
    raise DataError(f"{where}: image {path} is missing") from None
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise DataError(f"{where}: cannot decode image {path} ({e})") from None
  return np.asarray(image, np.uint8).reshape(shape)


def read_audio(path: str, where: str) -> np.ndarray:
  """float32 [NUM_SAMPLES]: AV-MNIST's 1 s window of an 8 kHz mono 16-bit wav."""
  if not os.path.isfile(path):
    raise DataError(f"{where}: audio {path} is missing")
  try:
    return spectrogram.fit_to_window(spectrogram.read_wav(path))[0]
  except DataError as e:
    raise DataError(f"{where}: {e}") from None


@DATASETS.register("captioned")
class Captioned(LocalBuilder):
  """Your own images and captions from a manifest (see the module docstring); element `i` of a split is
  its `i`-th manifest row."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

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

  @classmethod
  def load_tokenizer(cls, prepared_dir: str) -> Any:
    if not os.path.isdir(prepared_dir):
      raise DataError(f"dataset {prepared_dir} is not prepared yet: its tokenizer is built when it is")
    return tokenizers.load(prepared_dir)

  def features(self) -> tfds.features.FeaturesDict:
    config = self.builder_config
    features = {
      "image": tfds.features.Tensor(shape=config.image_shape, dtype=np.uint8, encoding="bytes"),
      "image_file": tfds.features.Text(),
      "caption": tfds.features.Text(),
      "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    }
    if config.class_names is not None:
      features["label"] = tfds.features.ClassLabel(names=config.class_names)
    if config.has_audio:
      size = spectrogram.SPEC_SIZE
      features["audio"] = tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding="bytes")
      features["audio_file"] = tfds.features.Text()
    return tfds.features.FeaturesDict(features)

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    manifest = manifest_path(self.manual_dir, config.manifest)
    rows = read_manifest(manifest)
    if file_digest(manifest) != config.manifest_digest:
      raise DataError(f"manifest {manifest} changed while it was read; prepare again")
    splits = split_rows(rows, config.split_fractions, config.split_seed)
    captions = [r.caption for r in splits["train"]]
    tokenizer = tokenizers.build(
      config.tokenizer, captions, min_count=config.min_count, vocab_size=config.vocab_size
    )
    scale = self._audio_scale(splits["train"]) if config.has_audio else None
    os.makedirs(self.data_dir, exist_ok=True)  # The temporary directory TFDS renames when done.
    tokenizers.save(tokenizer, self.data_dir)
    layout = {k: getattr(config, k) for k in ("class_names", "has_audio", "manifest_digest")}
    with open(os.path.join(self.data_dir, LAYOUT), "w") as f:
      json.dump(layout, f)
    return {split: self._generate_examples(split, part, tokenizer, scale) for split, part in splits.items()}

  def _path(self, relative: str) -> str:
    return os.path.join(self.manual_dir, os.path.expanduser(relative))

  def _audio_path(self, row: Row) -> str:
    assert row.audio is not None  # The dataset has audio, so every row names a file (`read_manifest`).
    return self._path(row.audio)

  def _audio_scale(self, rows: list[Row]) -> spectrogram.SpectrogramScale:
    waves = np.stack([read_audio(self._audio_path(r), r.where) for r in rows])
    return spectrogram.fit_spectrogram_scale(waves)

  def _generate_examples(self, split: str, rows: list[Row], tokenizer: Any, scale: Any):
    config = self.builder_config
    progress = Progress(f"preparing captioned {split}", len(rows), unit="examples")
    for i, row in enumerate(rows):
      tokens = tokenizer.encode(row.caption)
      if not len(tokens):  # The text encoder would read nothing: a caption of punctuation only.
        raise DataError(f"{row.where}: caption {row.caption!r} has no words")
      example = {
        "image": read_image(self._path(row.image), config.image_shape, row.where),
        "image_file": row.image,
        "caption": row.caption,
        "tokens": tokens,
      }
      if config.class_names is not None:
        example["label"] = row.label
      if scale is not None:
        wave = read_audio(self._audio_path(row), row.where)
        example["audio"] = scale.quantise(spectrogram.log_power_spectrogram(wave[None]))[0]
        example["audio_file"] = row.audio
      yield i, example
      progress.update()
    progress.finish()
