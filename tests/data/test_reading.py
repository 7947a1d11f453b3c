"""How examples are read (`config.dataset`): the captions' tokenizer, image size and normalisation,
random-resized crops, and batches built in worker processes (the same batches, the same state)."""

import logging
import os

import ml_collections
import numpy as np
import pytest

from mmlearn import data
from mmlearn.config.schema import get_config
from mmlearn.data import mmshapes, pipeline, preprocess, tokenizer_choice, tokenizers
from mmlearn.data.tokenizer_choice import TokenizerChoice
from mmlearn.errors import ConfigError


def load(data_dir, **reading):
  return data.load_sources("mmshapes", config="tiny", data_dir=data_dir, reading=data.Reading(**reading))


def captions(source) -> list[str]:
  return [preprocess.caption_text(source.records[i]["caption"]) for i in range(len(source))]


def test_the_default_keeps_stored_ids_and_the_sources_as_stored(data_dir):
  sources, _ = load(data_dir)
  assert not isinstance(sources["train"], preprocess.ExampleView)
  assert data.dataset_tokenizer(get_config().dataset) is mmshapes.TOKENIZER


def test_word_tokenizer_is_built_from_training_captions_once_and_runs_in_the_pipeline(data_dir, monkeypatch):
  sources, _ = load(data_dir, tokenizer=TokenizerChoice("word", min_count=2))
  train = sources["train"]
  built = tokenizers.build_word_tokenizer(captions(train), min_count=2)
  for i in (0, 99):
    caption = preprocess.caption_text(train.records[i]["caption"])
    assert list(train[i]["tokens"]) == list(built.encode(caption))
  cached = os.path.join(data_dir, "mmshapes", "tiny", "1.0.0", "tokenizers", "word-min2", "tokenizer.json")
  assert os.path.isfile(cached)
  monkeypatch.setattr(tokenizers, "build", None)  # A second load reads the cached tokenizer.
  dataset = ml_collections.ConfigDict(get_config().dataset.to_dict())
  dataset.update(data_dir=data_dir, config="tiny", tokenizer="word", min_count=2)
  assert data.dataset_tokenizer(dataset).vocab == built.vocab


def test_tokenizer_files_are_used_as_they_are(data_dir, tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415

  train_captions = captions(load(data_dir, tokenizer=TokenizerChoice("word"))[0]["train"])
  words = sorted({w for c in train_captions for w in c.lower().split()})
  hf = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
  hf.pre_tokenizer = pre_tokenizers.Whitespace()
  hf.save(str(tmp_path / "tokenizer.json"))
  subword = tokenizers.train_subword_tokenizer(train_captions, 400)
  (tmp_path / "pieces.model").write_bytes(subword.model)
  for path in (tmp_path / "tokenizer.json", tmp_path / "pieces.model"):
    train = load(data_dir, tokenizer=TokenizerChoice(str(path)))[0]["train"]
    reference = tokenizer_choice.load_file(str(path))
    caption = preprocess.caption_text(train.records[3]["caption"])
    assert list(train[3]["tokens"]) == list(reference.encode(caption)) and len(train[3]["tokens"]) > 0
  with pytest.raises(ConfigError, match="is neither '', 'word', 'subword' nor a tokenizer file"):
    load(data_dir, tokenizer=TokenizerChoice(str(tmp_path / "missing.json")))


def test_captions_longer_than_max_tokens_are_counted(data_dir, caplog):
  caplog.set_level(logging.WARNING)
  sources, _ = load(data_dir, tokenizer=TokenizerChoice("word"), max_tokens=4)
  lengths = [len(sources["train"][i]["tokens"]) for i in range(len(sources["train"]))]
  cut = sum(n > 4 for n in lengths)
  assert cut > 0
  expected = f"{cut} of {len(lengths)} training captions have more than dataset.max_tokens=4 tokens"
  assert any(expected in m for m in caplog.messages), caplog.messages


def test_image_size_and_per_tower_normalisation(data_dir):
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  sources, _ = load(data_dir, image_size=16, image_mean=mean, image_std=std)
  batch = next(pipeline.eval_batches(sources["test"], batch_size=8, max_tokens=16))
  stored = np.stack([preprocess.center_crop(sources["test"].records[i]["image"], 16) for i in range(8)])
  assert batch["image"].shape == (8, 16, 16, 3)
  np.testing.assert_allclose(batch["image"], (stored / 255.0 - np.asarray(mean)) / np.asarray(std), atol=1e-5)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def equal(a, b) -> bool:
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.e2e  # Spawns worker processes.
def test_worker_processes_build_the_same_batches_and_restore_their_state(data_dir):
  train = load(data_dir, image_size=24)[0]["train"]

  def batches(workers, crops=False):
    flip = pipeline.Augment(image_hflip=crops)  # A transform of the batch the workers build, too.
    return pipeline.train_iterator(
      train,
      batch_size=16,
      seed=3,
      max_tokens=8,
      memory_bytes=0,
      workers=workers,
      random_crops=crops,
      augment=flip,
    )

  inline = take(batches(0), 4)
  parallel = batches(2)
  assert equal(take(parallel, 2), inline[:2])
  state = parallel.get_state()
  assert equal(take(parallel, 2), inline[2:])
  restored = batches(2)
  restored.set_state(state)
  assert equal(take(restored, 2), inline[2:])
  cropped = take(batches(0, crops=True), 2)
  assert equal(take(batches(2, crops=True), 2), cropped)  # Seeded per example and batch number.
  assert equal(take(batches(0, crops=True), 2), cropped)
  assert not np.array_equal(cropped[0]["image"], inline[0]["image"])
  assert all(np.array_equal(c["label"], i["label"]) for c, i in zip(cropped, inline[:2], strict=True))


def test_random_crops_need_an_image_size(data_dir):
  train = load(data_dir)[0]["train"]
  with pytest.raises(ConfigError, match="augment.image_random_resized_crop needs dataset.image_size"):
    pipeline.train_iterator(train, batch_size=8, seed=0, max_tokens=8, random_crops=True)
