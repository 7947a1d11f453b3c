"""Which tokenizer reads a dataset's captions: `config.dataset.tokenizer`, applied in the input pipeline.

Captions are stored as text, so one prepared dataset serves every tokenizer:

* `""` (the default): the dataset's own. A dataset that stores token ids of a closed vocabulary
  (mmshapes) keeps them; one that stores only captions (captioned, tarshards) gets `word`.
* `"word"` / `"subword"`: built from the training split's captions (`mmlearn.data.tokenizers`:
  `dataset.min_count` for words, `dataset.vocab_size` for sentencepiece pieces), once, and cached beside
  the prepared records in `tokenizers/<kind>-<setting>/`: the same captions always build the same
  tokenizer, so a cached one is the one a new build would give.
* a path: a Hugging Face `tokenizer.json` (the `tokenizers` library: a pretrained text tower's own) or a
  sentencepiece `.model` file, used as it is.

When the tokenizer is first built or read for a dataset, it counts the training captions longer than
`dataset.max_tokens` by its own measure (words, pieces), since those are cut, and says so.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging

from mmlearn.data import siglip_text, tokenizers
from mmlearn.data.preprocess import Records, Tokenizer, caption_text
from mmlearn.errors import ConfigError, DataError

CACHE = "tokenizers"  # Subdirectory of a prepared dataset holding the tokenizers built from it.
LENGTHS = "caption_lengths.json"  # Training captions' token counts (a histogram), for the report.
_READ_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class TokenizerChoice:
  """`dataset.tokenizer` and the settings of the kinds built from captions."""

  name: str = ""
  vocab_size: int = 1000
  min_count: int = 1

  @classmethod
  def from_config(cls, dataset: Any) -> "TokenizerChoice":
    return cls(dataset.tokenizer, dataset.vocab_size, dataset.min_count)

  @property
  def is_file(self) -> bool:
    return self.name not in ("", *tokenizers.KINDS)

  def cache_name(self) -> str:
    if self.name == "word":
      return f"word-min{self.min_count}"
    if self.name == "subword":
      return f"subword-{self.vocab_size}"
    with open(self.name, "rb") as f:  # A file: named by its content, so an edited file is read anew.
      return f"file-{hashlib.sha256(f.read()).hexdigest()[:12]}"


class FileTokenizer:
  """A Hugging Face `tokenizer.json` (special tokens added as the file's post-processor says)."""

  kind = "file"

  def __init__(self, path: str):
    from tokenizers import Tokenizer as HFTokenizer  # noqa: PLC0415 (only runs naming a file need it)

    self.path = path
    try:
      self._tokenizer = HFTokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 (the library raises plain Exceptions for unreadable files)
      raise DataError(f"dataset.tokenizer {path}: not a tokenizers file ({e})") from None

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tokenizer.encode(text).ids, np.int32)

  def truncating(self, max_tokens: int) -> "FileTokenizer":
    """This tokenizer cutting encodings at `max_tokens` before its post-processor adds special tokens,
    as the reference library's `truncation=True` does: a cut caption keeps its end-of-text token, where
    text towers pool (CLIP's)."""
    specials = len(self._tokenizer.encode("").ids)
    if max_tokens <= specials:
      raise ConfigError(
        f"dataset.max_tokens={max_tokens} leaves no room beside {self.path}'s {specials} special tokens"
      )
    self._tokenizer.enable_truncation(max_tokens)
    return self

  def decode(self, ids: Any) -> str:
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def _check(choice: TokenizerChoice) -> None:
  if choice.is_file:
    if not os.path.isfile(choice.name):
      known = ", ".join(repr(k) for k in ("", *tokenizers.KINDS))
      raise ConfigError(
        f"dataset.tokenizer {choice.name!r} is neither {known} nor a tokenizer file (tokenizer.json, .model)"
      )
    if not choice.name.endswith((".json", ".model")):
      raise ConfigError(f"dataset.tokenizer {choice.name}: a tokenizer file ends in .json or .model")


def load_file(path: str) -> Tokenizer:
  if path.endswith(".model"):
    with open(path, "rb") as f:
      model = f.read()
    if siglip_text.is_siglip(path):
      return siglip_text.SiglipTokenizer(model, path)
    return tokenizers.SubwordTokenizer(model, lowercase=False)
  return FileTokenizer(path)


def _captions(records: Records) -> Iterator[str]:
  getitems = getattr(records, "__getitems__", None)
  for start in range(0, len(records), _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, len(records))))
    for example in getitems(keys) if getitems else (records[i] for i in keys):
      yield caption_text(example["caption"])


def _write_atomic(path: str, write) -> None:
  temporary = f"{path}.tmp{os.getpid()}"
  write(temporary)
  os.replace(temporary, path)


def built_tokenizer(
  choice: TokenizerChoice, prepared_dir: str, train: Records
) -> tuple[Tokenizer, np.ndarray]:
  """(the tokenizer `choice` names for the dataset in `prepared_dir`, its training captions' lengths
  histogram), built and cached on first use (module docstring)."""
  directory = os.path.join(prepared_dir, CACHE, choice.cache_name())
  tokenizer_path, lengths_path = (
    os.path.join(directory, tokenizers.FILENAME),
    os.path.join(directory, LENGTHS),
  )
  if os.path.isfile(lengths_path):
    tokenizer = load_file(choice.name) if choice.is_file else tokenizers.load(directory)
    with open(lengths_path) as f:
      return tokenizer, np.asarray(json.load(f), np.int64)
  captions = list(_captions(train))
  if choice.is_file:
    tokenizer = load_file(choice.name)
  else:
    tokenizer = tokenizers.build(
      choice.name, captions, min_count=choice.min_count, vocab_size=choice.vocab_size
    )
  lengths = np.bincount([len(tokenizer.encode(c)) for c in captions], minlength=1)
  os.makedirs(directory, exist_ok=True)
  if not choice.is_file:  # Hosts or runs building it at once write the same bytes: the last rename wins.
    _write_atomic(tokenizer_path, lambda path: tokenizers.save_file(tokenizer, path))
  _write_atomic(lengths_path, lambda path: _dump(lengths.tolist(), path))
  return tokenizer, lengths


def _dump(value: Any, path: str) -> None:
  with open(path, "w") as f:
    json.dump(value, f)


_reported: set[tuple[str, TokenizerChoice, int]] = set()  # Said once per process, not per caller.


def report_cut(lengths: np.ndarray, max_tokens: int, choice: TokenizerChoice, prepared_dir: str = "") -> int:
  """Logs how many training captions are longer than `max_tokens` (they are cut), once per dataset and
  setting in a process; returns that count."""
  cut = int(lengths[max_tokens + 1 :].sum())
  if cut and (prepared_dir, choice, max_tokens) not in _reported:
    _reported.add((prepared_dir, choice, max_tokens))
    logging.warning(
      "%d of %d training captions have more than dataset.max_tokens=%d tokens by the %s tokenizer "
      "(the longest: %d); they are cut",
      cut,
      int(lengths.sum()),
      max_tokens,
      choice.name or "dataset's",
      len(lengths) - 1,
    )
  return cut


def resolve(
  choice: TokenizerChoice,
  *,
  own: Tokenizer | None,
  stores_tokens: bool,
  has_captions: bool,
  prepared_dir: str,
  train: Records | None,
  max_tokens: int,
) -> tuple[Tokenizer | None, Tokenizer | None]:
  """(the dataset's vocabulary, the tokenizer the pipeline runs on captions: None keeps stored ids).

  `own` is the dataset's own tokenizer (of its stored `tokens`); `train` the training split's records,
  read to build a tokenizer and count long captions (None: only a cached tokenizer can be used).
  """
  _check(choice)
  if choice.name == "" and (stores_tokens or not has_captions):
    return own, None
  if not has_captions:
    raise ConfigError(f"dataset.tokenizer={choice.name!r}: the dataset has no captions to tokenize")
  if choice.name == "":
    choice = dataclasses.replace(choice, name="word")
  if train is None:
    raise DataError(f"the {choice.name} tokenizer of {prepared_dir} is built from its training captions")
  tokenizer, lengths = built_tokenizer(choice, prepared_dir, train)
  report_cut(lengths, max_tokens, choice, prepared_dir)
  if isinstance(tokenizer, FileTokenizer | siglip_text.SiglipTokenizer):  # A pretrained tower's own.
    tokenizer = tokenizer.truncating(max_tokens)
  return tokenizer, tokenizer
