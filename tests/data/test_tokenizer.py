"""Open-vocabulary tokenizers: unknown words, the minimum count, subword round trips, storage."""

import numpy as np
import pytest

from mmlearn.data import text, tokenizers
from mmlearn.errors import ConfigError, DataError

CAPTIONS = [
  "A dog runs on the beach.",
  "a dog sleeps",
  "The cat sleeps on the sofa",
  "a cat, a dog",
]


def test_word_tokenizer_keeps_words_seen_min_count_times_and_reads_others_as_unk():
  tokenizer = tokenizers.build_word_tokenizer(CAPTIONS, min_count=2)
  # Counts: a 4, dog 3, the 3, cat 2, on 2, sleeps 2; beach, runs, sofa once each. Ties: alphabetical.
  assert tokenizer.vocab == ("<pad>", "<unk>", "a", "dog", "the", "cat", "on", "sleeps")
  ids = tokenizer.encode("The dog runs to the zebra")
  assert ids.dtype == np.int32
  assert tokenizer.decode(ids) == "the dog <unk> <unk> the <unk>"
  assert tokenizer.unknown_words("The dog runs to the zebra") == ["runs", "to", "zebra"]
  assert tokenizers.UNK_ID == 1 and text.PAD_ID == 0
  everything = tokenizers.build_word_tokenizer(CAPTIONS, min_count=1)
  assert {"beach", "runs", "sofa"} <= set(everything.vocab)
  assert everything.decode(everything.encode("the dog runs")) == "the dog runs"
  assert everything.decode(np.pad(everything.encode("a cat"), (0, 3))) == "a cat"  # Padding is dropped.


def test_bad_settings_and_ids_are_errors():
  with pytest.raises(ConfigError, match="min_count must be >= 1"):
    tokenizers.build_word_tokenizer(CAPTIONS, min_count=0)
  with pytest.raises(ConfigError, match="vocab_size 60: sentencepiece cannot train"):
    tokenizers.build("subword", CAPTIONS, min_count=1, vocab_size=60)  # < 256 byte pieces + characters.
  with pytest.raises(ConfigError, match="unknown dataset.tokenizer 'bpe'"):
    tokenizers.build("bpe", CAPTIONS, min_count=1, vocab_size=100)
  tokenizer = tokenizers.build_word_tokenizer(CAPTIONS)
  with pytest.raises(DataError, match="token id 99 is outside"):
    tokenizer.decode([2, 99])


def test_subword_round_trips_any_text_and_trains_deterministically(tmp_path):
  captions = [f"a {colour} {animal} {verb} near the {place}" for colour in ("red", "brown", "white")
              for animal in ("dog", "horse", "cat") for verb in ("runs", "sleeps")
              for place in ("river", "house")]  # fmt: skip
  tokenizer = tokenizers.build("subword", captions, min_count=1, vocab_size=400)
  assert 256 < tokenizer.vocab_size <= 400  # The byte pieces, the characters and some longer pieces.
  for caption in (captions[0], "a brown horse sleeps near the house", "zebras übersprang 42 ✓"):
    ids = tokenizer.encode(caption)
    assert ids.dtype == np.int32 and len(ids) > 0 and (ids != 0).all()  # 0 is padding only.
    assert tokenizer.decode(np.pad(ids, (0, 4))) == caption.lower()  # Byte fallback: nothing is lost.
  assert len(tokenizer.encode("a brown horse")) < len("a brown horse")  # Pieces longer than characters.
  again = tokenizers.build("subword", captions, min_count=1, vocab_size=400)
  assert again.model == tokenizer.model
  tokenizers.save(tokenizer, str(tmp_path))
  loaded = tokenizers.load(str(tmp_path))
  np.testing.assert_array_equal(loaded.encode(captions[5]), tokenizer.encode(captions[5]))


def test_stored_word_tokenizer_loads_and_a_damaged_file_is_named(tmp_path):
  tokenizer = tokenizers.build_word_tokenizer(CAPTIONS, min_count=2)
  tokenizers.save(tokenizer, str(tmp_path))
  assert tokenizers.load(str(tmp_path)).vocab == tokenizer.vocab
  (tmp_path / tokenizers.FILENAME).write_text('{"kind": "word", "vocab": ["a"]}')
  with pytest.raises(DataError, match=f"{tokenizers.FILENAME} is damaged"):
    tokenizers.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is missing"):
    tokenizers.load(str(tmp_path / "elsewhere"))
