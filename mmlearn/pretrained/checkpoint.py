"""Hugging Face checkpoint directories: `config.json` + `model.safetensors`, read and written without torch.

A released checkpoint is a directory as `save_pretrained` writes it. Its tensors are read with the
`safetensors` package's numpy API, so loading needs neither PyTorch nor transformers. Everything that can
be wrong with a directory (a missing file, a config of another architecture, a truncated file, a tensor
whose name or shape does not fit) is a `CheckpointError` that names the file and, where one is at fault,
the tensor, so it ends a command as one line.

Writing is the reverse, for export: the directory is assembled under a temporary name beside the target
and renamed into place, so an interrupted export never leaves a half-written checkpoint, and an existing
directory is never overwritten.
"""

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from mmlearn.errors import CheckpointError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# Files a checkpoint directory may carry beside its weights, copied unchanged on export.
SIDE_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "spiece.model",
  "preprocessor_config.json",
)


def existing_file(directory: str | os.PathLike, name: str) -> Path:
  """`directory/name`, or a `CheckpointError` naming the missing path."""
  path = Path(directory) / name
  if not Path(directory).is_dir():
    raise CheckpointError(f"checkpoint directory {directory} does not exist")
  if not path.is_file():
    raise CheckpointError(f"checkpoint {directory} has no {name} (missing file {path})")
  return path


def read_json(directory: str | os.PathLike, name: str) -> dict[str, Any]:
  """A JSON object file of the checkpoint, or a `CheckpointError` naming it."""
  path = existing_file(directory, name)
  try:
    value = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise CheckpointError(f"{path} is not valid JSON: {error}") from None
  if not isinstance(value, dict):
    raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object")
  return value


def read_config(directory: str | os.PathLike, model_types: Sequence[str]) -> dict[str, Any]:
  """`config.json`, checked to describe one of `model_types` (its `model_type` key)."""
  config = read_json(directory, CONFIG)
  model_type = config.get("model_type")
  if model_type not in model_types:
    raise CheckpointError(
      f"{Path(directory) / CONFIG} is a {model_type!r} checkpoint, not {' or '.join(map(repr, model_types))}"
    )
  return config


def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of `model.safetensors` as a numpy array, by its name in the file."""
  path = existing_file(directory, WEIGHTS)
  try:
    return dict(safetensors.numpy.load_file(path))
  except (safetensors.SafetensorError, ValueError, OSError) as error:
    size = path.stat().st_size
    raise CheckpointError(
      f"{path} ({size:,} bytes) is truncated or not a safetensors file: {error}"
    ) from None


# safetensors' dtype names -> numpy dtypes (bfloat16 from ml_dtypes, which jax depends on).
DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


class MappedTensors(Mapping[str, np.ndarray]):
  """`model.safetensors` as a mapping of memory-mapped arrays, read from disk only when touched.

  Loading a tower converts one tensor at a time (transposed into the Flax layout) and drops it, so the
  peak memory is the parameters plus one tensor, not the parameters plus the whole file
  (`read_tensors`). A file whose header promises more bytes than it holds is refused up front.
  """

  def __init__(self, directory: str | os.PathLike):
    self.path = existing_file(directory, WEIGHTS)
    size = self.path.stat().st_size
    try:
      with open(self.path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > size - 8:
          raise ValueError(f"its header claims {length:,} bytes")
        header = json.loads(f.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as error:
      raise CheckpointError(
        f"{self.path} ({size:,} bytes) is truncated or not a safetensors file: {error}"
      ) from None
    self._start = 8 + length
    self._entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = max((entry["data_offsets"][1] for entry in self._entries.values()), default=0)
    if self._start + end > size:
      raise CheckpointError(
        f"{self.path} ({size:,} bytes) is truncated or not a safetensors file: its tensors end at byte "
        f"{self._start + end:,}"
      )
    unknown = sorted({entry["dtype"] for entry in self._entries.values()} - set(DTYPES))
    if unknown:
      raise CheckpointError(f"{self.path} holds tensors of dtype {unknown[0]}, which mmlearn does not read")

  def __getitem__(self, name: str) -> np.ndarray:
    entry = self._entries[name]
    shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
    if begin == end:
      return np.zeros(shape, DTYPES[entry["dtype"]])
    return np.memmap(self.path, DTYPES[entry["dtype"]], mode="r", offset=self._start + begin, shape=shape)

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def check_fits(
  expected: Mapping[str, tuple[tuple[int, ...], np.dtype]], found: Mapping[str, np.ndarray], where: str
) -> None:
  """A `CheckpointError` for the first tensor (in name order) that is missing, extra or of another shape.

  `expected` is the architecture's layout, built from `config.json`; `found` is the file's tensors.
  """
  for name in sorted(set(expected) | set(found)):
    if name not in found:
      shape = tuple(expected[name][0])
      raise CheckpointError(f"{where}: tensor {name!r} (expected shape {shape}) is missing from the file")
    if name not in expected:
      raise CheckpointError(
        f"{where}: tensor {name!r} (shape {tuple(found[name].shape)}) does not belong to the architecture "
        "its config.json describes"
      )
    shape, found_shape = tuple(expected[name][0]), tuple(found[name].shape)
    if shape != found_shape:
      raise CheckpointError(f"{where}: tensor {name!r} has shape {found_shape}, expected {shape}")


def write(
  directory: str | os.PathLike,
  config: Mapping[str, Any],
  tensors: Mapping[str, np.ndarray],
  *,
  copy_from: str | os.PathLike | None = None,
) -> Path:
  """Writes a checkpoint directory (config, tensors, and `copy_from`'s side files); refuses to overwrite.

  The tensors are written as given (names, shapes and dtypes), contiguous, with the `{"format": "pt"}`
  metadata `save_pretrained` writes, so the reference library reads them as its own.
  """
  target = Path(directory)
  if target.exists():
    raise CheckpointError(f"export directory {target} already exists; choose a new one")
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
  umask = os.umask(0)
  os.umask(umask)
  try:
    (staging / CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    # `copy(order="C")` keeps a 0-d tensor 0-d (CLIP's `logit_scale`), where `ascontiguousarray` makes it 1-d.
    arrays = {name: np.asarray(value).copy(order="C") for name, value in tensors.items()}
    safetensors.numpy.save_file(arrays, staging / WEIGHTS, metadata={"format": "pt"})
    os.chmod(staging / WEIGHTS, 0o666 & ~umask)  # As any file the user writes (the writer makes it 0600).
    os.chmod(staging, 0o777 & ~umask)
    if copy_from is not None:
      for name in SIDE_FILES:
        if (Path(copy_from) / name).is_file():
          shutil.copy2(Path(copy_from) / name, staging / name)
    staging.rename(target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return target
