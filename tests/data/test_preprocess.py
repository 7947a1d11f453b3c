"""Encoded media and the read view: decoding, sizing, crops, normalisation, tokenizing captions."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from mmlearn.data import media, preprocess, tokenizers
from mmlearn.errors import DataError


def picture(h=30, w=40, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trips_exactly_and_jpeg_is_close_at_the_stated_quality():
  image = picture()
  assert np.array_equal(media.decode_image(media.encode_image(image, "PNG")), image)
  smooth = np.repeat(np.repeat(picture(6, 8), 5, axis=0), 5, axis=1)  # Blocky: JPEG's easy case.
  jpeg = media.encode_image(smooth, "JPEG")
  assert media.image_format(jpeg) == "JPEG" and media.image_format(media.encode_image(smooth)) == "PNG"
  assert np.abs(media.decode_image(jpeg).astype(int) - smooth).mean() < 8


def test_gray_16_bit_keeps_its_top_8_bits_and_rgba_drops_alpha():
  wide = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
  out = io.BytesIO()
  Image.fromarray(wide).save(out, "PNG")  # Mode I;16.
  decoded = media.decode_image(out.getvalue(), channels=1)
  assert np.array_equal(decoded[..., 0], (wide >> 8).astype(np.uint8))
  assert decoded.max() == 255 and decoded.min() == 0  # Not clipped to all-255.
  rgba = np.dstack([picture(), np.full((30, 40), 7, np.uint8)])
  out = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(out, "PNG")
  assert np.array_equal(media.decode_image(out.getvalue()), rgba[..., :3])


def test_undecodable_bytes_and_a_wrong_shape_are_errors_naming_the_image():
  with pytest.raises(DataError, match=r"^shard-0\.tar:key\.jpg: cannot decode the image"):
    media.decode_image(b"\xff\xd8\xff not really a jpeg", where="shard-0.tar:key.jpg")
  truncated = media.encode_image(picture(), "JPEG")[:200]
  with pytest.raises(DataError, match="cannot decode"):
    media.decode_image(truncated)
  with pytest.raises(DataError, match=r"is \(30, 40, 3\), the dataset's shape is \(8, 8, 3\)"):
    media.ImageDecoder(3, (8, 8, 3))(media.encode_image(picture()))


def test_prepared_images_are_kept_or_resized_and_reencoded_once():
  png = media.encode_image(picture())
  assert media.prepared_image(png, None, "x") == png
  resized = media.prepared_image(png, (8, 10, 3), "x")
  assert np.array_equal(media.decode_image(resized), media.resize(picture(), 8, 10))
  gray = media.prepared_image(png, (8, 10, 1), "x")
  assert media.decode_image(gray, channels=1).shape == (8, 10, 1)
  assert (
    media.image_format(media.prepared_image(media.encode_image(picture(), "JPEG"), (8, 8, 3), "x")) == "JPEG"
  )


def test_center_crop_takes_the_middle_of_the_shorter_side():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 255  # The central square of a 20 x 40 image.
  crop = preprocess.center_crop(image, 10)
  assert np.array_equal(crop, media.resize(image, 10, 20)[:, 5:15])
  assert crop[:, 1:-1].min() == 255  # The square, up to the resize's blur at its two edges.
  square = picture(16, 16)
  assert np.array_equal(preprocess.center_crop(square, 8), media.resize(square, 8, 8))


def test_random_resized_crops_are_seeded_sized_and_vary():
  image = picture(64, 48)
  crops = [preprocess.random_resized_crop(image, 24, np.random.default_rng(s)) for s in (1, 1, 2)]
  assert all(c.shape == (24, 24, 3) for c in crops)
  assert np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[0], crops[2])


def test_normalisation_defaults_are_the_historical_scale_bitwise_and_towers_get_theirs():
  batch = {"image": picture(4, 5)[None], "audio": picture(4, 5)[None, ..., :1]}
  default = preprocess.normalise_batch(batch)
  for name in ("image", "audio"):
    assert np.array_equal(default[name], batch[name].astype(np.float32) * (2.0 / 255.0) - 1.0)
  mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's.
  clip = preprocess.normalise_batch(batch, mean, std)
  expected = (batch["image"] / 255.0 - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(clip["image"], expected, rtol=0, atol=1e-5)  # float32 rounding.
  assert np.array_equal(clip["audio"], default["audio"])  # Per-tower statistics are for images.
  with pytest.raises(DataError, match="dataset.image_mean has 2 values for images of 3 channels"):
    preprocess.normalise_batch(batch, (0.5, 0.5), (0.5,))


class Records(list):
  pass


def test_the_view_decodes_sizes_and_tokenizes_and_pickles():
  images = [picture(30, 40, s) for s in range(3)]
  records = Records(
    {"image": media.encode_image(image), "caption": f"a red thing {i}".encode(), "label": np.int64(i)}
    for i, image in enumerate(images)
  )
  tokenizer = tokenizers.build_word_tokenizer(["a red thing", "a blue thing"])
  view = preprocess.ExampleView(records, {"image": media.ImageDecoder()}, tokenizer, image_size=16)
  example = view[1]
  assert np.array_equal(example["image"], preprocess.center_crop(images[1], 16))
  assert list(example["tokens"]) == list(tokenizer.encode("a red thing 1")) and example["label"] == 1
  cropped = view.example(1, np.random.default_rng(0))
  assert cropped["image"].shape == (16, 16, 3) and not np.array_equal(cropped["image"], example["image"])
  again = pickle.loads(pickle.dumps(view))
  assert np.array_equal(again[2]["image"], view[2]["image"]) and len(again) == 3
  stored = preprocess.ExampleView(Records([{"tokens": np.array([3, 4], np.int32), "caption": b"x y"}]))
  assert list(stored[0]["tokens"]) == [3, 4]  # No tokenizer: stored ids are kept.
