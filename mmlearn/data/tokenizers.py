"""Open-vocabulary tokenizers, built from a training split's captions (`dataset.tokenizer`, see
`tokenizer_choice`) and cached with the prepared dataset.

Real captions contain words nobody listed in advance, so unlike the closed `text.WordTokenizer` of the
synthetic datasets these map what they do not know to `<unk>` instead of failing. Two kinds:

* `word`: lower-cased words (as `text.WordTokenizer` splits them) seen at least `min_count` times in
  the training captions; rarer ones become `<unk>`, so the model never learns an embedding from one or
  two examples and the test split's new words are handled the same way as rare training words.
* `subword`: a sentencepiece unigram model trained offline on the training captions (case-folded),
  with byte fallback, so any text encodes and decodes back exactly; `vocab_size` bounds its pieces.

Both keep `<pad>` at id 0 (the pipeline pads with zeros and masks them) and `<unk>` at id 1, and are
stored as one `tokenizer.json` (`save`, `load`): a trained run's ids are only meaningful with the
tokenizer it was trained with.
"""

import base64
import collections
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from mmlearn.data.text import _WORD, PAD, PAD_ID
from mmlearn.errors import ConfigError, DataError

UNK = "<unk>"
UNK_ID = 1
FILENAME = "tokenizer.json"
KINDS = ("word", "subword")


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
  ids = np.asarray(ids).reshape(-1).tolist()
  for i in ids:
    if not 0 <= i < vocab_size:
      raise DataError(f"token id {i} is outside the vocabulary of {vocab_size} tokens")
  return ids


class OpenWordTokenizer:
  """Lower-cased words -> ids; a word outside the vocabulary is `<unk>` (id 1)."""

  kind = "word"

  def __init__(self, vocab: Sequence[str]):
    vocab = tuple(vocab)
    if vocab[:2] != (PAD, UNK) or len(set(vocab)) != len(vocab):
      raise ValueError(f"the vocabulary must start with {PAD!r}, {UNK!r} and repeat no entry")
    self.vocab = vocab
    self._ids = {word: i for i, word in enumerate(vocab)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def words(self, text: str) -> list[str]:
    return _WORD.findall(text.lower())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray([self._ids.get(word, UNK_ID) for word in self.words(text)], np.int32)

  def unknown_words(self, text: str) -> list[str]:
    """The words of `text` that `encode` reads as `<unk>` (for tools to say so)."""
    return [word for word in self.words(text) if word not in self._ids]

  def decode(self, ids: Iterable[int]) -> str:
    """Words joined by spaces, padding skipped; unknown words come back as `<unk>`."""
    return " ".join(self.vocab[i] for i in _check_ids(ids, self.vocab_size) if i != PAD_ID)

  def to_json(self) -> dict:
    return {"kind": self.kind, "vocab": list(self.vocab)}


def build_word_tokenizer(captions: Iterable[str], min_count: int = 1) -> OpenWordTokenizer:
  """Words seen at least `min_count` times, most frequent first (ties alphabetical: a stable order)."""
  if min_count < 1:
    raise ConfigError(f"dataset.min_count must be >= 1, got {min_count}")
  counts = collections.Counter(word for caption in captions for word in _WORD.findall(caption.lower()))
  kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  return OpenWordTokenizer((PAD, UNK, *kept))


class SubwordTokenizer:
  """A sentencepiece model (serialised proto bytes). Those trained here have `<pad>` = 0, `<unk>` = 1, no
  BOS/EOS, and read lower-cased text; a model from elsewhere (`lowercase=False`) reads text as it is."""

  kind = "subword"

  def __init__(self, model: bytes, lowercase: bool = True):
    import sentencepiece  # noqa: PLC0415 (only datasets with subword text load it)

    self.model, self.lowercase = model, lowercase
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    except RuntimeError as e:
      raise DataError(f"not a sentencepiece model ({e})") from None

  def __getstate__(self) -> dict:  # The processor does not pickle; the pipeline's workers need it.
    return {"model": self.model, "lowercase": self.lowercase}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["model"], state["lowercase"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text.lower() if self.lowercase else text), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([i for i in _check_ids(ids, self.vocab_size) if i != PAD_ID])

  def to_json(self) -> dict:
    return {"kind": self.kind, "model": base64.b64encode(self.model).decode("ascii")}


def train_subword_tokenizer(captions: Sequence[str], vocab_size: int) -> SubwordTokenizer:
  """A unigram model trained on `captions` in one thread (so the same captions give the same model).

  `vocab_size` is an upper bound: a small corpus has fewer distinct pieces, and sentencepiece then keeps
  what it found instead of failing (`hard_vocab_limit=False`). It must leave room for the 256 byte
  pieces of the byte fallback and every character of the captions (about 300 at the least).
  """
  import io  # noqa: PLC0415

  import sentencepiece  # noqa: PLC0415

  model = io.BytesIO()
  try:
    _train(sentencepiece, captions, model, vocab_size)
  except RuntimeError as e:  # Too small a vocabulary for the characters, mostly: a setting to change.
    message = str(e).split("] ")[-1]
    raise ConfigError(f"dataset.vocab_size {vocab_size}: sentencepiece cannot train ({message})") from None
  return SubwordTokenizer(model.getvalue())


def _train(sentencepiece, captions: Sequence[str], model, vocab_size: int) -> None:
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter([c.lower() for c in captions]),
    model_writer=model,
    model_type="unigram",
    vocab_size=vocab_size,
    hard_vocab_limit=False,
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=-1,
    eos_id=-1,
    byte_fallback=True,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
  )


def build(kind: str, captions: Sequence[str], *, min_count: int, vocab_size: int):
  if kind == "word":
    return build_word_tokenizer(captions, min_count)
  if kind == "subword":
    return train_subword_tokenizer(captions, vocab_size)
  raise ConfigError(f"unknown dataset.tokenizer {kind!r}; known: {', '.join(KINDS)}")


def save(tokenizer, directory: str) -> None:
  save_file(tokenizer, os.path.join(directory, FILENAME))


def save_file(tokenizer, path: str) -> None:
  with open(path, "w") as f:
    json.dump(tokenizer.to_json(), f)


def load(directory: str):
  """The tokenizer stored in a prepared dataset's directory; a missing or damaged file names itself."""
  path = os.path.join(directory, FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"prepared dataset file {path} is missing; delete {directory} to prepare it again"
    )
  try:
    with open(path) as f:
      stored = json.load(f)
    if stored["kind"] == "word":
      return OpenWordTokenizer(stored["vocab"])
    return SubwordTokenizer(base64.b64decode(stored["model"]))
  except (ValueError, KeyError, TypeError, RuntimeError) as e:
    raise DataError(f"prepared dataset file {path} is damaged ({e}); delete {directory}") from None
