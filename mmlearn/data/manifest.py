"""A manifest of examples: a CSV file (with a header row) or JSON lines, one row per example, checked row
by row so every problem names its file and line; and the seeded rule that splits rows without a `split`
column (see `mmlearn.data.captioned` for the columns and the rule).
"""

import csv
import dataclasses
import hashlib
import io
import json
import os
from typing import Any

import numpy as np

from mmlearn.errors import DataError

SPLITS = ("train", "validation", "test")
COLUMNS = ("image", "caption", "label", "audio", "split")
REQUIRED = ("image", "caption")


@dataclasses.dataclass
class Row:
  where: str  # `manifest:line`, for error messages.
  image: str
  caption: str
  label: str | None = None
  audio: str | None = None
  split: str | None = None


def manifest_path(manual_dir: str, manifest: str) -> str:
  return os.path.join(os.path.expanduser(manual_dir), os.path.expanduser(manifest))


def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _manifest_text(path: str) -> str:
  """The manifest decoded as UTF-8 (a leading byte-order mark, as spreadsheets write, dropped).

  Another encoding (Latin-1, Windows-1252) is an error naming the line and byte: decoding it anyway
  would store wrong captions without a word of warning.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest {path} is missing")
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise DataError(
      f"{path}:{line}: the manifest is not UTF-8 (byte offset {e.start}: {data[e.start : e.end]!r}); "
      "save it as UTF-8"
    ) from None
  return text.removeprefix("\ufeff")


def _records(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, raw row) of a CSV (header row) or JSON-lines manifest."""
  rows = []
  lines = io.StringIO(_manifest_text(path), newline="")  # As a file opened with newline="" reads.
  if path.endswith(".jsonl"):
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise DataError(f"{path}:{number}: not a JSON object ({e})") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: not a JSON object, got {type(record).__name__}")
      rows.append((number, record))
  else:
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not set(REQUIRED) <= set(columns):
      raise DataError(
        f"{path}: header {columns} must name {', '.join(REQUIRED)} and only {', '.join(COLUMNS)}"
      )
    for record in reader:
      if None in record or None in record.values():
        raise DataError(f"{path}:{reader.line_num}: {len(columns)} columns expected")
      rows.append((reader.line_num, record))
  if not rows:
    raise DataError(f"manifest {path} has no rows")
  return rows


def read_manifest(path: str) -> list[Row]:
  """The manifest's rows, each checked: required columns present and non-empty, known columns only, no
  row repeated whole (see the module docstring)."""
  rows = []
  first_line: dict[tuple[str | None, ...], int] = {}  # A row's values -> the line that first had them.
  for line, record in _records(path):
    where = f"{path}:{line}"
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
      raise DataError(f"{where}: unknown column(s) {unknown}; known: {', '.join(COLUMNS)}")
    values = {k: v if isinstance(v, str) else str(v) for k, v in record.items() if v is not None}
    for column in REQUIRED:
      if not values.get(column, "").strip():
        raise DataError(f"{where}: no {column!r}")
    split = values.get("split") or None
    if split is not None and split not in SPLITS:
      raise DataError(f"{where}: split {split!r} is none of {', '.join(SPLITS)}")
    label, audio = values.get("label") or None, values.get("audio") or None
    row = Row(where, values["image"], values["caption"], label=label, audio=audio, split=split)
    key = (os.path.normpath(row.image), row.caption, label, audio and os.path.normpath(audio), split)
    if key in first_line:
      raise DataError(
        f"{where}: repeats line {first_line[key]} (the same image, caption, label, audio and split); "
        "remove one of them"
      )
    first_line[key] = line
    rows.append(row)
  for column in ("label", "audio", "split"):
    given = [getattr(r, column) is not None for r in rows]
    if any(given) and not all(given):
      raise DataError(f"{rows[given.index(False)].where}: no {column!r}, which other rows have")
  return rows


def split_rows(rows: list[Row], fractions: tuple[float, ...], seed: int) -> dict[str, list[Row]]:
  """The `split` column's splits, else the seeded rule of the module docstring."""
  if rows[0].split is not None:
    splits = {split: [r for r in rows if r.split == split] for split in SPLITS}
  else:
    order = np.random.default_rng(seed).permutation(len(rows))
    n_train = round(len(rows) * fractions[0])
    n_validation = round(len(rows) * fractions[1])
    parts = np.split(order, [n_train, n_train + n_validation])
    splits = {split: [rows[i] for i in np.sort(part)] for split, part in zip(SPLITS, parts, strict=True)}
  empty = [split for split, part in splits.items() if not part]
  if empty:
    sizes = ", ".join(f"{s} {len(p)}" for s, p in splits.items())
    raise DataError(f"the manifest's {len(rows)} rows leave no {' or '.join(empty)} examples ({sizes})")
  return splits
