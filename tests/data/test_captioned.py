"""The `captioned` builder on generated folders + manifests: splits, what it stores (encoded images and
recordings, captions as text) against what version 1 stored as arrays, parallel preparation, bad input."""

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from folders import write_folder, write_manifest, write_wav
from PIL import Image

from mmlearn import data
from mmlearn.data import captioned, media, spectrogram
from mmlearn.data.manifest import SPLITS
from mmlearn.errors import ConfigError, DataError

VERSION = str(captioned.Captioned.VERSION)


def load(tmp_path, options, *, manual_dir="raw", **kwargs):
  return data.load_sources(
    "captioned",
    config="mine",
    data_dir=str(tmp_path / "tfds"),
    manual_dir=None if manual_dir is None else str(tmp_path / manual_dir),
    options=options,
    **kwargs,
  )


def builder(tmp_path, options, *, data_dir="tfds", manual_dir="raw", **kwargs) -> captioned.Captioned:
  """The builder `load` prepares (given `prepare_workers`, say), for its `decoders()`."""
  directory, raw = str(tmp_path / data_dir), str(tmp_path / manual_dir)
  cls, config = data.resolve_config("captioned", "mine", options=options, manual_dir=raw, data_dir=directory)
  made = cls(data_dir=directory, config=config, file_format="array_record", manual_dir=raw, **kwargs)
  assert isinstance(made, captioned.Captioned)
  return made


def stored(tmp_path, options, *, data_dir="tfds") -> tuple[captioned.Captioned, dict]:
  """The prepared builder and its splits' records as stored (`load_sources` gives them decoded)."""
  made = builder(tmp_path, options, data_dir=data_dir)
  return made, {split: made.as_data_source(split) for split in SPLITS}


def version_1_image(path, shape) -> np.ndarray:
  """What version 1 stored: Pillow's conversion and bilinear resize, as a uint8 array."""
  with Image.open(path) as image:
    array = np.asarray(
      image.convert("RGB" if shape[2] == 3 else "L").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    )
  return array.reshape(shape)


# --- Splits and what is stored ------------------------------------------------------------------------


def test_splits_labels_and_text_captions_follow_the_stated_rule(tmp_path):
  rows = write_folder(tmp_path / "raw", 20)
  rows[3]["caption"] = "?!"  # No words: stored as it is, the pipeline's tokenizer decides.
  write_manifest(str(tmp_path / "raw" / "manifest.csv"), rows)
  options = {"image_shape": (6, 8, 1), "split_fractions": (0.6, 0.2, 0.2), "split_seed": 3}
  sources, info = load(tmp_path, options)
  assert "tokens" not in info.features and info.features["image"].np_dtype == np.object_  # Encoded.
  # The stated rule: permute with the seed, cut 12 / 4 / 4, keep manifest order within a split.
  order = np.random.default_rng(3).permutation(20)
  expected = {"train": order[:12], "validation": order[12:16], "test": order[16:]}
  for split, indices in expected.items():
    source = sources[split]
    assert [source[j]["image_file"].decode() for j in range(len(source))] == [
      rows[i]["image"] for i in np.sort(indices)
    ], split
    assert [source[j]["caption"].decode() for j in range(len(source))] == [
      rows[i]["caption"] for i in np.sort(indices)
    ]
  assert info.features["label"].names == ["blue", "red"]  # Sorted class names.
  example, row = sources["test"][0], rows[int(np.sort(expected["test"])[0])]
  assert example["label"] == ["blue", "red"].index(row["label"])
  # `load_sources` reads the images through the builder's decoders: arrays, as version 1 stored them.
  expected_image = version_1_image(tmp_path / "raw" / row["image"], (6, 8, 1))
  np.testing.assert_array_equal(example["image"], expected_image)
  # Prepared once, it reads without its raw files, and other options prepare another directory.
  shutil.rmtree(tmp_path / "raw")
  again, _ = load(tmp_path, options, manual_dir=None)
  assert len(again["train"]) == 12
  assert sorted(os.listdir(tmp_path / "tfds" / "captioned")) == [
    captioned.config_name("mine", captioned.check_options(options))
  ]


@pytest.mark.parametrize("shape", [(6, 8, 1), (8, 8, 3), (20, 24, 3)])
def test_png_images_decode_to_exactly_the_pixels_version_1_stored(tmp_path, shape):
  rows = write_folder(tmp_path / "raw", 10, split_column=True)
  options = {"image_shape": shape}
  load(tmp_path, options)
  made, records = stored(tmp_path, options)
  decode = made.decoders()["image"]
  assert decode == media.ImageDecoder(shape[2], shape)
  for k, split in enumerate(SPLITS):
    for j, row in enumerate(rows[k::3]):
      image = records[split][j]["image"]
      assert image[:8] == b"\x89PNG\r\n\x1a\n"  # A PNG source stays lossless.
      expected = version_1_image(tmp_path / "raw" / row["image"], shape)
      np.testing.assert_array_equal(decode(image), expected, err_msg=row["image"])


def test_jpeg_sources_are_reencoded_as_jpeg_and_no_shape_keeps_the_files(tmp_path):
  rows = write_folder(tmp_path / "raw", 6, split_column=True)
  for row in rows:  # JPEG sources, of different sizes.
    path = tmp_path / "raw" / row["image"]
    with Image.open(path) as image:
      image.convert("RGB").resize((24 + int(row["image"][7]), 20)).save(path.with_suffix(".jpg"), quality=90)
    row["image"] = row["image"].replace(".png", ".jpg")
  write_manifest(str(tmp_path / "raw" / "manifest.csv"), rows)
  load(tmp_path, {"image_shape": (10, 12, 3)})
  made, records = stored(tmp_path, {"image_shape": (10, 12, 3)})
  image = records["train"][1]["image"]
  assert image[:3] == b"\xff\xd8\xff"
  expected = version_1_image(tmp_path / "raw" / rows[3]["image"], (10, 12, 3))
  assert np.abs(made.decoders()["image"](image).astype(int) - expected).mean() < 3  # JPEG_QUALITY 95.

  load(tmp_path, {"image_shape": None})
  made, kept = stored(tmp_path, {"image_shape": None})
  decode = made.decoders()["image"]
  assert decode == media.ImageDecoder(3, None)
  for k, split in enumerate(SPLITS):
    for j, row in enumerate(rows[k::3]):
      assert kept[split][j]["image"] == (tmp_path / "raw" / row["image"]).read_bytes()
  assert decode(kept["train"][1]["image"]).shape == (20, 27, 3)  # Its own size.


def test_a_16_bit_gray_png_prepares_to_its_top_8_bits(tmp_path):
  rows = write_folder(tmp_path / "raw", 3, split_column=True)
  wide = (np.arange(20 * 24).reshape(20, 24) * 130 + 300).astype(np.uint16)  # 300 .. 62570.
  picture = Image.fromarray(wide)
  assert picture.mode == "I;16"
  picture.save(tmp_path / "raw" / rows[0]["image"])
  sources, _ = load(tmp_path, {"image_shape": (20, 24, 1)})
  image = sources["train"][0]["image"]  # Decoded by `load_sources`.
  np.testing.assert_array_equal(image[..., 0], (wide >> 8).astype(np.uint8))  # Not Pillow's clip to 255.
  assert image.min() == 1 and image.max() == 244


def test_audio_is_the_wav_bytes_and_decodes_to_the_spectrogram_version_1_stored(tmp_path):
  rows = write_folder(tmp_path / "raw", 9, manifest="m.jsonl", audio=True)
  options = {"manifest": "m.jsonl", "image_shape": (8, 8, 3)}
  sources, info = load(tmp_path, options)
  assert "label" not in info.features  # No label column: a dataset for retrieval, not classification.
  # Version 1's computation: the scale fitted on the training recordings, each quantised on it.
  paths = {split: [str(tmp_path / "raw" / r["audio"]) for r in rows[k::3]] for k, split in enumerate(SPLITS)}
  waves = {
    s: np.stack([spectrogram.fit_to_window(spectrogram.read_wav(p))[0] for p in ps])
    for s, ps in paths.items()
  }
  scale = spectrogram.fit_spectrogram_scale(waves["train"])
  made, records = stored(tmp_path, options)
  decode = made.decoders()["audio"]
  assert decode == captioned.AudioDecoder(low=scale.low, high=scale.high)
  decode = pickle.loads(pickle.dumps(decode))  # It runs in the pipeline's worker processes.
  for split in SPLITS:
    for j, path in enumerate(paths[split]):
      record = records[split][j]
      assert record["audio"] == Path(path).read_bytes()
      assert record["audio_file"].decode() == os.path.relpath(path, tmp_path / "raw")
      expected = scale.quantise(spectrogram.log_power_spectrogram(waves[split][j][None]))[0]
      assert expected.shape == (spectrogram.SPEC_SIZE, spectrogram.SPEC_SIZE, 1)
      np.testing.assert_array_equal(decode(record["audio"]), expected)
      np.testing.assert_array_equal(sources[split][j]["audio"], expected)  # As `load_sources` reads it.
  assert expected.max() > expected.min()


def test_read_wav_bytes_checks_as_read_wav_does(tmp_path):
  write_wav(str(tmp_path / "a.wav"), 0.2, np.random.default_rng(0))
  raw = (tmp_path / "a.wav").read_bytes()
  np.testing.assert_array_equal(
    spectrogram.read_wav_bytes(raw, "row 3"), spectrogram.read_wav(str(tmp_path / "a.wav"))
  )
  with pytest.raises(DataError, match=r"^row 3: truncated wav file \(header says 1600 frames, found 1000\)$"):
    spectrogram.read_wav_bytes(raw[:-1200], "row 3")
  (tmp_path / "b.wav").write_bytes(raw[:-1200])
  with pytest.raises(DataError, match=r"b.wav: truncated wav file"):
    spectrogram.read_wav(str(tmp_path / "b.wav"))
  with pytest.raises(DataError, match=r"^row 3: not a valid wav file"):
    spectrogram.read_wav_bytes(b"RIFF nonsense", "row 3")


def test_parallel_preparation_writes_the_same_shards_as_one_process(tmp_path, monkeypatch):
  write_folder(tmp_path / "raw", 15, audio=True)
  monkeypatch.setattr(captioned.Captioned, "EXAMPLES_PER_SHARD", 2)  # Several shards a split.
  options = {"image_shape": (8, 10, 3)}
  prepared = {}
  for workers in (0, 2):
    made = builder(tmp_path, options, data_dir=f"tfds{workers}", prepare_workers=workers)
    made.download_and_prepare()
    prepared[workers] = Path(made.data_dir)
  names = sorted(f for f in os.listdir(prepared[0]) if ".array_record-" in f)
  assert len(names) == 9 and sorted(f for f in os.listdir(prepared[2]) if ".array_record-" in f) == names
  for name in [*names, captioned.LAYOUT]:
    assert (prepared[0] / name).read_bytes() == (prepared[2] / name).read_bytes(), name
  # An error in a worker process is the same one line, naming the row.
  (tmp_path / "raw" / "images" / "7.png").write_bytes(b"not a png")
  made = builder(tmp_path, {"image_shape": (8, 8, 3)}, data_dir="tfds_bad", prepare_workers=2)
  with pytest.raises(DataError, match=r"^\S*manifest.csv:9: image \S*images/7.png: cannot decode the image"):
    made.download_and_prepare()


def test_the_same_image_may_have_several_captions(tmp_path):
  rows = write_folder(tmp_path / "raw", 6)
  rows.append({**rows[0], "caption": "another caption of image 0"})
  rows.append({**rows[0], "label": "blue"})  # Another label, as a multi-label dataset lists them.
  write_manifest(str(tmp_path / "raw" / "manifest.csv"), rows)
  sources, _ = load(tmp_path, {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25)})
  assert sum(len(s) for s in sources.values()) == 8


def test_a_manifest_with_a_byte_order_mark_reads(tmp_path):
  write_folder(tmp_path / "raw", 6)
  path = tmp_path / "raw" / "manifest.csv"
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # As spreadsheets save "CSV UTF-8".
  sources, _ = load(tmp_path, {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25)})
  assert sources["train"][0]["image_file"].decode().startswith("images/")


# --- Bad input ----------------------------------------------------------------------------------------


def _missing_image(root):
  os.remove(os.path.join(root, "images", "2.png"))


def _corrupt_image(root):
  with open(os.path.join(root, "images", "4.png"), "wb") as f:
    f.write(b"not a png")


def _empty_caption(root):
  _edit_manifest(root, lambda text: text.replace("a blue circle w3", ""))


def _unknown_column(root):
  _edit_manifest(root, lambda text: text.replace("caption", "captoin", 1))


def _latin_1(root):
  path = os.path.join(root, "manifest.csv")
  with open(path, encoding="utf-8") as f:
    text = f.read().replace("a red circle w2", "a red circle w2 in a café")
  with open(path, "w", encoding="latin-1", newline="") as f:
    f.write(text)


def _repeated_row(root):
  _edit_manifest(root, lambda text: text + text.splitlines()[2] + "\r\n")


def _edit_manifest(root, edit):
  path = os.path.join(root, "manifest.csv")
  with open(path, newline="") as f:
    text = f.read()
  with open(path, "w", newline="") as f:
    f.write(edit(text))


@pytest.mark.parametrize(
  "damage, options, error, message",
  [
    (_missing_image, {}, DataError, r"manifest.csv:4: image .*images/2.png is missing$"),
    (_corrupt_image, {}, DataError, r"manifest.csv:6: image .*images/4.png: cannot decode the image"),
    (
      _corrupt_image,
      {"image_shape": None},
      DataError,
      r"manifest.csv:6: image .*images/4.png: cannot decode",
    ),
    (_empty_caption, {}, DataError, r"manifest.csv:5: no 'caption'"),
    (_unknown_column, {}, DataError, r"header \['image', 'captoin', 'label'\] must name image, caption"),
    (_latin_1, {}, DataError, r"manifest.csv:4: the manifest is not UTF-8 \(byte offset \d+: b'\\xe9'\)"),
    (_repeated_row, {}, DataError, r"manifest.csv:8: repeats line 3 \(the same image, caption, label"),
    (None, {"image_size": 8}, ConfigError, r"unknown dataset.options \['image_size'\] of 'captioned'"),
    (
      None,
      {"tokenizer": "word"},
      ConfigError,
      r"\['tokenizer'\] of 'captioned' are now config.dataset.token",
    ),
    (None, {"image_shape": (8, 8, 2)}, ConfigError, r"image_shape must be \(height, width, 1 or 3\) or None"),
    (None, {"split_fractions": (0.5, 0.5)}, ConfigError, "split_fractions must be 3 fractions"),
    (None, {"split_fractions": (0.9, 0.1, 0.0)}, DataError, r"6 rows leave no test examples"),
    (None, {"manifest": "nope.csv"}, FileNotFoundError, r"manifest .*nope.csv is missing"),
  ],
)
def test_bad_folders_and_options_are_one_line_errors_naming_the_row(
  tmp_path, damage, options, error, message
):
  write_folder(tmp_path / "raw", 6)
  if damage:
    damage(str(tmp_path / "raw"))
  with pytest.raises(error, match=message) as raised:
    load(tmp_path, {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25), **options})
  assert "\n" not in str(raised.value)
  assert not list((tmp_path / "tfds").glob(f"captioned/*/{VERSION}")), "a failed preparation looks prepared"


def test_a_damaged_recording_names_its_row_even_outside_the_training_split(tmp_path):
  rows = write_folder(tmp_path / "raw", 6, audio=True)
  path = tmp_path / "raw" / rows[4]["audio"]  # A validation row: not read to fit the scale.
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match=r"manifest.csv:6: audio .*audio/4.wav: truncated wav file"):
    load(tmp_path, {"image_shape": (8, 8, 3)}, splits=("train",))
  os.remove(tmp_path / "raw" / rows[0]["audio"])
  with pytest.raises(DataError, match=r"manifest.csv:2: audio .*audio/0.wav is missing$"):
    load(tmp_path, {"image_shape": (8, 8, 3)})


def test_a_changed_manifest_or_no_manual_dir_is_an_error(tmp_path):
  write_folder(tmp_path / "raw", 6)
  options = {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25)}
  with pytest.raises(ConfigError, match="set dataset.manual_dir"):
    load(tmp_path, options, manual_dir=None)
  load(tmp_path, options)
  _edit_manifest(str(tmp_path / "raw"), lambda text: text + "images/0.png,one more,red\n")
  with pytest.raises(DataError, match="manifest .*manifest.csv changed since .* was prepared"):
    load(tmp_path, options)


def test_decoders_pickle_and_need_a_prepared_dataset_for_the_audio_scale(tmp_path):
  write_folder(tmp_path / "raw", 6, audio=True)
  unprepared = builder(tmp_path, {"image_shape": (8, 8, 3)})
  with pytest.raises(DataError, match="not prepared yet: its audio scale is fitted when it is"):
    unprepared.decoders()
  unprepared.download_and_prepare()
  decoders = unprepared.decoders()  # The builder that prepared it reads the scale it wrote.
  assert pickle.loads(pickle.dumps(decoders)) == decoders
  with pytest.raises(DataError, match="a stored recording: not a valid wav file"):
    decoders["audio"](b"RIFF")
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, "PNG")
  with pytest.raises(DataError, match=r"a stored image is \(4, 4, 3\), the dataset's shape is \(8, 8, 3\)"):
    decoders["image"](buffer.getvalue())
