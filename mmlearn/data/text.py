"""A word-level tokenizer over a fixed, closed vocabulary.

The datasets here are synthetic, so every word a caption can contain is known in advance. A closed
vocabulary therefore has no unknown-word token: a word outside it is a mistake (a typo in a retrieval
query, a template edited without its vocabulary) and `encode` says so by name instead of quietly mapping
it to `<unk>`, which would make such mistakes invisible in the results.
"""

import re
from collections.abc import Iterable, Sequence

import numpy as np

from mmlearn.errors import DataError

PAD = "<pad>"
PAD_ID = 0  # Padding is id 0 so zero-filled arrays are padded arrays; decoding drops it.

# Words are runs of letters and digits; everything else (spaces, punctuation) only separates them.
_WORD = re.compile(r"[^\W_]+")


class WordTokenizer:
  """Maps lower-cased words to ids and back; `vocab[0]` must be `"<pad>"`."""

  def __init__(self, vocab: Sequence[str]):
    vocab = tuple(vocab)
    if not vocab or vocab[0] != PAD:
      raise ValueError(f"the vocabulary must start with {PAD!r} (id {PAD_ID}), got {vocab[:1]}")
    duplicates = sorted({word for word in vocab if vocab.count(word) > 1})
    if duplicates:
      raise ValueError(f"the vocabulary repeats {duplicates}")
    # Every non-special entry must survive `encode` unchanged, or it could never be produced.
    bad = [word for word in vocab[1:] if _WORD.findall(word.lower()) != [word]]
    if bad:
      raise ValueError(f"vocabulary entries {bad} are not single lower-case words")
    self._vocab = vocab
    self._ids = {word: i for i, word in enumerate(vocab)}

  @property
  def vocab(self) -> tuple[str, ...]:
    return self._vocab

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  def words(self, text: str) -> list[str]:
    """The lower-cased words of `text`, punctuation dropped: what `encode` looks up."""
    return _WORD.findall(text.lower())

  def encode(self, text: str) -> np.ndarray:
    """Word ids of `text` as int32; raises `DataError` naming the first word not in the vocabulary."""
    ids = []
    for word in self.words(text):
      if word not in self._ids:
        raise DataError(f"unknown word {word!r} in {text!r}; the vocabulary has {self.vocab_size} words")
      ids.append(self._ids[word])
    return np.asarray(ids, np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """The words of `ids` joined by spaces, padding skipped (so padded and unpadded ids agree)."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i < self.vocab_size:
        raise DataError(f"token id {i} is outside the vocabulary of {self.vocab_size} words")
      if i != PAD_ID:
        words.append(self._vocab[i])
    return " ".join(words)
