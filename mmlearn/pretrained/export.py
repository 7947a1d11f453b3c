"""Writing a run's towers back as the Hugging Face checkpoint they came from, LoRA adapters merged.

The export starts from the source checkpoint (the directory the towers were built from): every tensor
keeps its name, shape and dtype, and the towers the run trained replace theirs (`TowerFormat.to_tensors`,
cast back to the file's dtype). Parts the run did not use (the text tower of a run that only fine-tuned
the vision tower) are copied unchanged, and so are the tokenizer and preprocessor files, except that a
run whose `dataset.tokenizer` named a tokenizer file exports that one. The reference library then loads
the directory as one of its own (`tests/fixtures/make_pretrained.py --check_export`).

    python scripts/export_pretrained.py --workdir=runs/clip_ft --out=exports/clip_ft
"""

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mmlearn.errors import CheckpointError
from mmlearn.pretrained import checkpoint, loading
from mmlearn.pretrained.formats import FORMATS
from mmlearn.runs import restore
from mmlearn.train import lora
from mmlearn.train import state as train_state


def source_of(towers: Sequence[loading.Tower], choice: str = "") -> str:
  """The one checkpoint directory the towers come from (or `choice`, which must be one of them)."""
  sources = sorted({str(Path(t.checkpoint).resolve()) for t in towers})
  if not sources:
    raise CheckpointError("the run has no pretrained towers to export (config.model names none)")
  if choice:
    if str(Path(choice).resolve()) not in sources:
      raise CheckpointError(f"the run has no tower from {choice}; its towers come from {', '.join(sources)}")
    return str(Path(choice).resolve())
  if len(sources) > 1:
    raise CheckpointError(
      f"the run's towers come from {len(sources)} checkpoints ({', '.join(sources)}): name one"
    )
  return sources[0]


def export(
  params: Mapping[str, Any],
  towers: Sequence[loading.Tower],
  out: str,
  *,
  source: str = "",
  tokenizer_file: str = "",
) -> Path:
  """Writes `out`: the source checkpoint with the towers' (LoRA-merged) parameters from `params`."""
  params = jax.device_get(dict(params))
  if lora.KEY in params:
    params = lora.merged(params)
  directory = source_of(towers, source)
  config = checkpoint.read_json(directory, checkpoint.CONFIG)
  tensors = dict(checkpoint.read_tensors(directory))
  where = str(Path(directory) / checkpoint.WEIGHTS)
  mine = [t for t in towers if str(Path(t.checkpoint).resolve()) == directory]
  for t in mine:
    for name, value in FORMATS.get(t.encoder).to_tensors(loading.subtree_at(params, t.path), config).items():
      if name not in tensors or tensors[name].shape != np.shape(value):
        found = tensors[name].shape if name in tensors else "absent"
        raise CheckpointError(f"{where}: tensor {name!r} is {found} there but {np.shape(value)} in the run")
      tensors[name] = np.asarray(value).astype(tensors[name].dtype)
  if len(mine) == len(towers):  # Model-level scalars are this checkpoint's only when every tower is.
    for name, target in loading.MODEL_SCALARS.items():
      if name in tensors and target in params:
        tensors[name] = np.asarray(params[target]).astype(tensors[name].dtype).reshape(tensors[name].shape)
  written = checkpoint.write(out, config, tensors, copy_from=directory)
  if tokenizer_file:
    name = "spiece.model" if tokenizer_file.endswith(".model") else "tokenizer.json"
    shutil.copy2(tokenizer_file, written / name)
  return written


def export_run(workdir: str, out: str, *, source: str = "") -> Path:
  """Exports the state a finished run reports (`mmlearn.runs.restore.load_run`) to `out`."""
  config = restore.read_config(workdir)
  sources, _, task, variables = restore.load_run(config, workdir, ())
  example = train_state.example_batch(config, sources["train"], 1)
  towers = loading.find_towers(task.init, train_state.init_keys(config)[0], example)
  tokenizer = str(config.dataset.tokenizer)
  tokenizer_file = tokenizer if tokenizer.endswith((".json", ".model")) else ""
  return export(variables["params"], towers, out, source=source, tokenizer_file=tokenizer_file)
