"""SigLIP's text rules around its sentencepiece model, so a pretrained SigLIP tower reads captions exactly
as its released tokenizer (transformers' `SiglipTokenizer`) gives them to it.

The rules (big_vision's prompt canonicalisation): lower-case, punctuation removed, runs of whitespace
collapsed, stripped; the model's pieces without a dummy prefix; `</s>` appended. A caption longer than
`max_tokens` is cut before `</s>` is appended, as the reference's `truncation=True` cuts it, so the
last real position the tower pools always exists.
"""

import json
import os
import re
import string

import numpy as np

from mmlearn.errors import DataError

_PUNCTUATION = str.maketrans("", "", string.punctuation)
UNK, EOS = "<unk>", "</s>"
WORD_START = "\u2581"  # Sentencepiece's word-start mark.


def is_siglip(model_path: str) -> bool:
  """Whether the `tokenizer_config.json` beside a sentencepiece model names `SiglipTokenizer`."""
  config = os.path.join(os.path.dirname(model_path), "tokenizer_config.json")
  if not os.path.isfile(config):
    return False
  try:
    with open(config) as f:
      return json.load(f).get("tokenizer_class") == "SiglipTokenizer"
  except (OSError, ValueError) as e:
    raise DataError(f"{config} is not readable JSON ({e})") from None


class SiglipTokenizer:
  kind = "file"

  def __init__(self, model: bytes, path: str, max_tokens: int = 0):
    import sentencepiece  # noqa: PLC0415 (only SigLIP text loads it)

    self.model, self.path, self.max_tokens = model, path, max_tokens
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    except RuntimeError as e:
      raise DataError(f"{path}: not a sentencepiece model ({e})") from None
    self._unk_pieces = len(self._sp.encode(UNK, out_type=str))
    self.eos_id = self._sp.piece_to_id(EOS)

  def __getstate__(self) -> dict:  # The processor does not pickle; the pipeline's workers need it.
    return {"model": self.model, "path": self.path, "max_tokens": self.max_tokens}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["model"], state["path"], state["max_tokens"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def truncating(self, max_tokens: int) -> "SiglipTokenizer":
    """This tokenizer cutting captions to `max_tokens` ids, `</s>` included."""
    self.max_tokens = max_tokens
    return self

  def encode(self, text: str) -> np.ndarray:
    # The reference marks the start of the text as a word start ("▁") before the canonicalisation.
    text = WORD_START + text.replace(WORD_START, " ")
    text = re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).strip()
    # Encoding after `<unk>` and dropping its pieces keeps sentencepiece from adding a dummy prefix.
    pieces = self._sp.encode(UNK + text, out_type=str)[self._unk_pieces :]
    if len(pieces) > 1 and pieces[0] == WORD_START and pieces[1] in (UNK, EOS):
      pieces = pieces[1:]
    ids = [self._sp.piece_to_id(piece) for piece in pieces]
    if self.max_tokens:
      ids = ids[: self.max_tokens - 1]
    return np.asarray([*ids, self.eos_id], np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1) if int(i) != self.eos_id])
