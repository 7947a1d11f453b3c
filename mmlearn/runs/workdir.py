"""A run's directory: one trainer at a time, and a resume only with the config that trained it.

A workdir's `config.json` is the record tools read a run back from (`scripts/robustness.py`,
`retrieve.py`, `generate.py`), so it must always describe the parameters in its checkpoints. The
trainer therefore (1) holds an exclusive lock on the workdir while it runs, so two trainers never
interleave their logs and checkpoints; (2) compares the config it was given with the saved one before it
writes anything, and refuses a resume that would train with other hyperparameters, naming the keys;
(3) writes `config.json` atomically, only once the checkpoint it resumes from has been restored.

Some keys change how a run is observed, not what it learns (`RESUMABLE_KEYS`: logging, checkpoint and
evaluation frequency, evaluation batching, where the data lives); with `allow_changes` (the trainer's
`--allow_config_changes`) those may differ, and `num_train_steps` / `num_epochs` may grow (a longer run:
note that a decaying schedule then decays over the new length from the resumed step on).
"""

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import ml_collections

from mmlearn import locks
from mmlearn.config import migrate
from mmlearn.errors import WorkdirError

CONFIG = "config.json"
LOCK = ".lock"

RESUMABLE_KEYS = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_steps",
  "eval_batch_size",
  "dataset.data_dir",
  "dataset.manual_dir",
  "dataset.eval_splits",
  "parallel.mode",  # shard_map and pmap compute the same step, equal within float rounding (tested).
  "retrieval.query_chunk",
  "retrieval.random_baseline",
  "mvae.grid_conditions",
  "mvae.grid_samples",
  "flow.grid_conditions",
  "flow.grid_samples",
)
EXTENDABLE_KEYS = ("num_train_steps", "num_epochs")


# The checkout mmlearn runs from, if it is one: runs must not write among its tracked files.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prepare(workdir: str) -> str | None:
  """Creates `workdir` if needed; returns the topmost directory this created (None: it existed). A path
  that is empty, names a file or lies in the repository's tracked tree is an error, before any write."""
  if not workdir:
    raise WorkdirError("--workdir is empty: name a directory for the run")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir!r} is a file, not a directory")
  if tracked := tracked_files_under(workdir):
    raise WorkdirError(
      f"workdir {workdir!r} holds files of the repository ({tracked}): checkpoints would be written among "
      "them; use a directory of its own, e.g. --workdir=runs/NAME"
    )
  created, parent = None, os.path.abspath(workdir)
  while not os.path.exists(parent):
    created, parent = parent, os.path.dirname(parent)
  os.makedirs(workdir, exist_ok=True)
  return created


def tracked_files_under(workdir: str) -> str:
  """A file git tracks in the part of the repository `workdir` would live in (the root itself, or the
  top-level directory holding it: `configs/`, `docs/`), or "" (outside a repository, or a directory of
  its own such as `runs/`)."""
  path = os.path.abspath(workdir)
  if (
    not os.path.isdir(os.path.join(REPOSITORY, ".git"))
    or os.path.commonpath([path, REPOSITORY]) != REPOSITORY
  ):
    return ""
  relative = os.path.relpath(path, REPOSITORY)
  top = "." if relative == "." else relative.split(os.sep)[0]
  try:
    listed = subprocess.run(
      ["git", "-C", REPOSITORY, "ls-files", "--", top], capture_output=True, text=True, timeout=30
    ).stdout.split()
  except (OSError, subprocess.SubprocessError):
    return ""  # No git to ask: nothing is refused.
  return listed[0] if listed else ""


def remove_if_unused(workdir: str, created: str) -> None:
  """Removes what `prepare` created (`created`, the topmost new directory, down to `workdir`) when the
  workdir holds nothing but the lock: a refused new run leaves nothing behind."""
  with contextlib.suppress(OSError):
    if set(os.listdir(workdir)) <= {LOCK}:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, LOCK))
      directory = os.path.abspath(workdir)
      while True:
        os.rmdir(directory)  # Fails, and stops, at a directory that is not empty.
        if directory == created:
          break
        directory = os.path.dirname(directory)


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on `workdir` (an flock on `<workdir>/.lock`, released when the process dies).

  A second trainer fails at once with the holder's pid. Multi-process runs lock on process 0 only
  (`enabled`): the processes of one run share its workdir.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK)

  def busy(holder: str) -> WorkdirError:
    return WorkdirError(
      f"workdir {workdir!r} is in use by process {holder} ({path}); wait for it or use another --workdir"
    )

  with locks.held(path, busy):
    yield


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as `config.json` holds it (tuples become lists), for comparing a config with a saved one."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out
  return {prefix: tree}


def read_config(workdir: str) -> dict[str, Any] | None:
  """The saved `config.json` of `workdir`, or None if there is none."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); restore it or use another --workdir") from None


def changed_keys(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two JSON configs (added or removed keys included)."""
  a, b = _flatten(saved), _flatten(config)
  return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def check_resume(workdir: str, config: ml_collections.ConfigDict, *, allow_changes: bool) -> list[str]:
  """Raises `WorkdirError` unless `config` may continue the run saved in `workdir`; returns the changed keys.

  Refused: any difference without `allow_changes`; with it, a difference outside `RESUMABLE_KEYS`, or a
  shorter run.
  """
  saved = read_config(workdir)
  if saved is None:
    return []
  where = os.path.join(workdir, CONFIG)
  # In today's layout: a key added since the run was saved has its default, which it trained with.
  saved = migrate.upgrade(saved, where=where)
  new = as_json(config)
  flat_saved, flat_new = _flatten(saved), _flatten(new)
  changed = changed_keys(saved, new)
  if not changed:
    return []

  def show(keys):
    return ", ".join(
      f"{k} ({flat_saved.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r})" for k in keys
    )

  if not allow_changes:
    raise WorkdirError(
      f"{where} holds a run with another config: {show(changed)}; use another --workdir "
      "(or --allow_config_changes for logging, evaluation and length keys)"
    )
  shorter = [
    k for k in EXTENDABLE_KEYS if k in changed and _length(flat_new.get(k)) < _length(flat_saved.get(k))
  ]
  refused = [k for k in changed if k not in RESUMABLE_KEYS and k not in EXTENDABLE_KEYS] + shorter
  if refused:
    raise WorkdirError(
      f"{where} holds a run with another config: {show(refused)} would change what the saved parameters "
      "were trained with; use another --workdir"
    )
  return changed


def _length(value: Any) -> float:
  """num_train_steps / num_epochs as a comparable length (-1 and 0 mean "not set")."""
  return float("inf") if value is None else float(value)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `config.json` atomically: a crash leaves the old file or the new one, never half of one."""
  path = os.path.join(workdir, CONFIG)
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(temporary, path)
