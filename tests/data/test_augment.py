"""Training-batch augmentation: each transform, seeding and restore, off by default, eval untouched."""

import numpy as np
import pytest

from configs import default
from mmlearn import data
from mmlearn.config import checks as config_checks
from mmlearn.data import augment as A
from mmlearn.data import pipeline
from mmlearn.data.pipeline import TrainingData
from mmlearn.errors import ConfigError

# One of each, as the config names them; which feature each changes.
EACH = [
  ({"image_crop_pad": 4}, "image"),
  ({"image_rotate_degrees": 15.0}, "image"),
  ({"image_hflip": True}, "image"),
  ({"text_token_dropout": 0.3}, "text"),
]


@pytest.fixture(scope="module")
def sources(data_dir):
  return data.load_sources("mmshapes", config="tiny", data_dir=data_dir)[0]


def train_batches(source, n=3, **kwargs):
  it = pipeline.train_iterator(source, batch_size=16, seed=0, max_tokens=16, **kwargs)
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
    assert a[key].dtype == b[key].dtype


def images(seed=0, shape=(6, 9, 9, 2)):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


class FixedAngle:
  """Stands in for the generator: every rotation angle is `degrees`."""

  def __init__(self, degrees):
    self.degrees = degrees

  def uniform(self, low, high, size):
    return np.full(size, self.degrees)


# ---- The transforms ----


def test_crop_is_a_crop_of_the_reflect_padded_image():
  x = images()
  out = A.random_crop(x, 3, np.random.default_rng(5))
  dy, dx = np.random.default_rng(5).integers(-3, 4, size=(2, len(x)))
  padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
  for i in range(len(x)):
    np.testing.assert_array_equal(out[i], padded[i, 3 + dy[i] : 12 + dy[i], 3 + dx[i] : 12 + dx[i]])


def test_rotation_by_zero_is_exact_and_by_ninety_is_rot90():
  x = images()
  np.testing.assert_array_equal(A.random_rotate(x, 10.0, FixedAngle(0.0)), x)
  # Positive angles turn clockwise as displayed (rows downwards); the range is symmetric anyway.
  np.testing.assert_allclose(
    A.random_rotate(x, 90.0, FixedAngle(90.0)), np.rot90(x, -1, axes=(1, 2)), atol=1e-5
  )
  small = A.random_rotate(x, 10.0, np.random.default_rng(0))
  assert small.shape == x.shape and small.dtype == x.dtype and not np.array_equal(small, x)
  assert small.min() >= x.min() and small.max() <= x.max()  # Bilinear: convex combinations of pixels.


def test_hflip_mirrors_about_half_the_images():
  x = images(shape=(200, 4, 5, 1))
  out = A.random_hflip(x, np.random.default_rng(0))
  flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x, strict=True)])
  kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)])
  assert (flipped | kept).all() and 70 < flipped.sum() < 130


@pytest.mark.parametrize("axis", [1, 2])
def test_spectrogram_mask_is_one_band_of_at_most_the_width(axis):
  x = np.random.default_rng(0).uniform(-0.9, 1, (64, 12, 10, 1)).astype(np.float32)
  out = A.random_mask(x, 4, axis=axis, rng=np.random.default_rng(0))
  masked = out == A.FILL
  other = 3 - axis
  assert (masked.all(axis=other) == masked.any(axis=other)).all()  # Whole rows or whole columns.
  lines = masked.any(axis=other)[..., 0]  # [B, size along `axis`]
  widths = lines.sum(1)
  assert widths.max() <= 4 and widths.max() > 0 and (widths == 0).any()
  for line, width in zip(lines, widths, strict=True):  # One contiguous band.
    assert width == 0 or np.ptp(np.flatnonzero(line)) == width - 1
  np.testing.assert_array_equal(out[~masked], x[~masked])


def test_token_dropout_keeps_a_nonempty_in_order_prefix_and_its_mask():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 9, 500)
  mask = np.arange(8) < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, 50, (500, 8)), 0).astype(np.int32)
  out, out_mask = A.token_dropout(tokens, mask, 0.5, np.random.default_rng(1))
  assert out.dtype == tokens.dtype and out_mask.dtype == bool
  kept = out_mask.sum(1)
  assert ((kept >= 1) | (lengths == 0)).all() and (kept <= lengths).all() and kept.sum() < lengths.sum()
  for row, new, n in zip(tokens, out, kept, strict=True):
    assert (new[n:] == 0).all() and (new[:n] != 0).all()
    it = iter(row.tolist())
    assert all(t in it for t in new[:n].tolist())  # A subsequence: order kept.
  np.testing.assert_array_equal(A.token_dropout(tokens, mask, 0.0, rng)[0], tokens)


def test_bad_strengths_fail_with_one_line():
  for kwargs, message in [
    ({"image_crop_pad": -1}, "image_crop_pad"),
    ({"image_rotate_degrees": 200.0}, "image_rotate_degrees"),
    ({"text_token_dropout": 1.0}, "text_token_dropout"),
  ]:
    with pytest.raises(ConfigError, match=message):
      A.Augment(**kwargs)
  with pytest.raises(ConfigError, match="smaller than the image"):
    A.random_crop(images(), 9, np.random.default_rng(0))


# ---- In the pipeline ----


def test_off_by_default_and_the_default_config_is_off(sources):
  assert not A.Augment.from_config(default.get_config().augment).active
  plain = train_batches(sources["train"])
  explicit = train_batches(
    sources["train"],
    augment=A.Augment(),
    training=TrainingData(imbalance_ratio=1.0, imbalance_seed=5, sampler="uniform"),
  )
  for a, b in zip(plain, explicit, strict=True):
    assert_same(a, b)


@pytest.mark.parametrize("kwargs, feature", EACH)
def test_each_augmentation_changes_its_input_only_and_is_seeded(sources, kwargs, feature):
  plain = train_batches(sources["train"])
  augmented = train_batches(sources["train"], augment=A.Augment(**kwargs))
  for a, b in zip(plain, augmented, strict=True):
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a[feature], b[feature])
    for key in a.keys() - {feature, f"{feature}_mask"}:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(augmented, train_batches(sources["train"], augment=A.Augment(**kwargs)), strict=True):
    assert_same(a, b)
  # A different seed draws different augmentations of the same batch.
  one, two = (A.Augment(**kwargs)(plain[0], np.random.default_rng(seed)) for seed in (1, 2))
  assert not np.array_equal(one[feature], two[feature])


def test_augmented_stream_restores_exactly(sources):
  augment = A.Augment(image_crop_pad=2, image_rotate_degrees=10.0, text_token_dropout=0.2)
  it = pipeline.train_iterator(sources["train"], batch_size=8, seed=4, max_tokens=16, augment=augment)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = pipeline.train_iterator(
    sources["train"], batch_size=8, seed=4, max_tokens=16, augment=augment, memory_bytes=0
  )
  resumed.set_state(state)  # Into the streaming path: augmentation depends on the batch number only.
  for want in expected:
    assert_same(next(resumed), want)


def test_eval_batches_are_not_augmented(sources):
  source = sources["validation"]
  batch = next(pipeline.eval_batches(source, batch_size=32, max_tokens=16))
  stored = np.stack([source[i]["image"] for i in range(32)]).astype(np.float32) * (2 / 255) - 1
  np.testing.assert_array_equal(batch["image"], stored)


def test_config_checks_reject_bad_values(tiny_config):
  config_checks.check(tiny_config)
  for key, value, message in [
    ("augment.text_token_dropout", 1.5, "text_token_dropout"),
    ("augment.audio_time_mask", -2, "audio_time_mask"),
    ("classification.imbalance_ratio", 0.0, "imbalance_ratio"),
    ("classification.sampler", "balanced", "sampler"),
  ]:
    config = tiny_config.copy_and_resolve_references()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
      config_checks.check(config)


def test_avmnist_audio_masks_and_image_augmentations(avmnist_data_dir):
  sources, _ = data.load_sources("avmnist", config="tiny", data_dir=avmnist_data_dir, splits=("train",))
  source = sources["train"]
  augment = A.Augment(image_crop_pad=3, image_rotate_degrees=10.0, audio_time_mask=20, audio_freq_mask=20)
  plain, augmented = train_batches(source, n=1), train_batches(source, n=1, augment=augment)
  a, b = plain[0], augmented[0]
  np.testing.assert_array_equal(a["label"], b["label"])
  assert b["image"].shape == a["image"].shape == (16, 28, 28, 1)
  assert not np.array_equal(a["image"], b["image"])
  changed = b["audio"] != a["audio"]
  assert changed.any() and (b["audio"][changed] == A.FILL).all()  # Only masking touches the audio.
