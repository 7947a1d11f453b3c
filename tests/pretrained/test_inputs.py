"""A pretrained tower's input conventions: its processor's settings read into `config.dataset`, and the
pipeline applying them (resampling filter, crop or squash, grey images made RGB)."""

import json
import pathlib

import numpy as np
import pytest

from mmlearn.config import schema
from mmlearn.data import Reading, media, preprocess, tokenizer_choice
from mmlearn.errors import CheckpointError, ConfigError
from mmlearn.pretrained import loading, preprocessing

CLIP_PROCESSOR = {
  "crop_size": {"height": 32, "width": 32},
  "do_center_crop": True,
  "do_normalize": True,
  "do_rescale": True,
  "do_resize": True,
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3,
  "rescale_factor": 0.00392156862745098,
  "size": {"shortest_edge": 32},
}
SIGLIP_PROCESSOR = {
  "do_normalize": True,
  "do_rescale": True,
  "do_resize": True,
  "image_mean": [0.5, 0.5, 0.5],
  "image_std": [0.5, 0.5, 0.5],
  "resample": 2,
  "rescale_factor": 0.00392156862745098,
  "size": {"height": 48, "width": 48},
}


def write_checkpoint(directory, processor, tokenizer="tokenizer.json"):
  directory.mkdir()
  (directory / "preprocessor_config.json").write_text(json.dumps(processor))
  if tokenizer:
    (directory / tokenizer).write_text("{}")
  return directory


def test_clip_and_siglip_processors_become_dataset_settings(tmp_path):
  clip = write_checkpoint(tmp_path / "clip", CLIP_PROCESSOR)
  siglip = write_checkpoint(tmp_path / "siglip", SIGLIP_PROCESSOR, tokenizer="spiece.model")
  dataset = schema.get_config("retrieval").dataset
  preprocessing.use_checkpoint_inputs(dataset, str(clip))
  assert (dataset.image_size, dataset.image_crop, dataset.image_resample) == (32, True, "bicubic")
  assert dataset.image_mean == tuple(CLIP_PROCESSOR["image_mean"]) and dataset.tokenizer.endswith(
    "tokenizer.json"
  )
  preprocessing.use_checkpoint_inputs(dataset, str(siglip))
  assert (dataset.image_size, dataset.image_crop, dataset.image_resample) == (48, False, "bilinear")
  assert dataset.image_std == (0.5, 0.5, 0.5) and dataset.tokenizer.endswith("spiece.model")


def test_processor_problems_are_one_line(tmp_path):
  with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
    preprocessing.image_settings(tmp_path)
  oblong = write_checkpoint(tmp_path / "oblong", {**SIGLIP_PROCESSOR, "size": {"height": 32, "width": 48}})
  with pytest.raises(CheckpointError, match="not square"):
    preprocessing.image_settings(oblong)
  lanczos = write_checkpoint(tmp_path / "lanczos", {**CLIP_PROCESSOR, "resample": 1}, tokenizer="")
  with pytest.raises(CheckpointError, match="resample 1"):
    preprocessing.image_settings(lanczos)
  with pytest.raises(CheckpointError, match="has no tokenizer"):
    preprocessing.tokenizer_file(lanczos)


def test_unknown_resampling_filter_is_a_config_error():
  dataset = schema.get_config("retrieval").dataset
  dataset.image_resample = "lanczos"
  with pytest.raises(ConfigError, match="dataset.image_resample"):
    Reading.from_config(dataset)


class Records:
  def __init__(self, images):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return {"image": self.images[index], "label": index}


def test_crop_or_squash_with_the_named_filter():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  records = Records([image])
  cropped = preprocess.ExampleView(records, image_size=32, image_resample="bicubic")[0]["image"]
  np.testing.assert_array_equal(cropped, media.resize(image, 32, 48, "bicubic")[:, 8:40])
  squashed = preprocess.ExampleView(records, image_size=32, image_crop=False)[0]["image"]
  np.testing.assert_array_equal(squashed, media.resize(image, 32, 32, "bilinear"))
  assert not np.array_equal(media.resize(image, 32, 48, "bicubic"), media.resize(image, 32, 48, "bilinear"))


def test_grey_images_become_rgb_under_three_channel_statistics():
  grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
  out = preprocess.normalise_batch({"image": grey}, mean, std)["image"]
  assert out.shape == (2, 4, 4, 3)
  for channel in range(3):
    expected = (grey[..., 0] / 255.0 - mean[channel]) / std[channel]
    np.testing.assert_allclose(out[..., channel], expected, atol=1e-5)
  kept = preprocess.normalise_batch({"image": grey}, (0.5,), (0.5,))["image"]
  assert kept.shape == (2, 4, 4, 1)


FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "pretrained"
VISION_FIXTURES = ("clip_a", "clip_b", "siglip_a", "siglip_b")


@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_pipeline_images_equal_the_reference_processor(name):
  """Raw uint8 images (40x50 and 50x40) read through the settings `use_checkpoint_inputs` takes from the
  fixture's preprocessor_config.json equal the reference processor's pixel values. Both resize with
  Pillow on uint8, so only the float normalisation differs (a lookup table here): 1e-5 covers it."""
  directory = FIXTURES / name
  ref = np.load(directory / "reference.npz")
  dataset = schema.get_config("retrieval").dataset
  preprocessing.use_checkpoint_inputs(dataset, str(directory), text=False)
  view = preprocess.ExampleView(
    Records([ref["raw_image_0"], ref["raw_image_1"]]),
    image_size=dataset.image_size,
    image_resample=dataset.image_resample,
    image_crop=dataset.image_crop,
  )
  batch = {"image": np.stack([view[0]["image"], view[1]["image"]])}
  pixels = preprocess.normalise_batch(batch, dataset.image_mean, dataset.image_std)["image"]
  np.testing.assert_allclose(pixels, ref["processed_pixel_values"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_pipeline_tokens_equal_the_reference_tokenizer(name):
  """The checkpoint's tokenizer as `dataset.tokenizer` names it (tokenizer.json for CLIP, spiece.model
  with SigLIP's rules) gives the reference tokenizer's ids, cut at the text tower's length."""
  directory = FIXTURES / name
  ref = np.load(directory / "reference.npz")
  tokenizer = tokenizer_choice.load_file(preprocessing.tokenizer_file(directory))
  tokenizer = tokenizer.truncating(loading.max_text_positions(str(directory)))
  for text, ids, mask in zip(ref["texts"], ref["token_ids"], ref["token_mask"], strict=True):
    np.testing.assert_array_equal(tokenizer.encode(str(text)), ids[mask.astype(bool)])


def test_a_cut_caption_keeps_its_end_of_text_token():
  tokenizer = tokenizer_choice.load_file(str(FIXTURES / "clip_a" / "tokenizer.json")).truncating(6)
  full = tokenizer_choice.load_file(str(FIXTURES / "clip_a" / "tokenizer.json")).encode("a " * 20)
  cut = tokenizer.encode("a " * 20)
  assert len(cut) == 6 and cut[0] == full[0] and cut[-1] == full[-1] != full[5]
  with pytest.raises(ConfigError, match="leaves no room"):
    tokenizer_choice.load_file(str(FIXTURES / "clip_a" / "tokenizer.json")).truncating(2)
