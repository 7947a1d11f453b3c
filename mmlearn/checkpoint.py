"""Checkpoints of the train state (params, optimizer state, step, RNG) and the data iterator, together.

Saving both in one orbax step is what makes a resumed run bitwise identical to an uninterrupted one:
the restored iterator yields exactly the batches the interrupted run would have seen next. orbax
writes each step to a temporary directory and renames it when complete, so an interruption never
leaves a half-written checkpoint that looks valid. Saves are synchronous: a failed write (a full disk)
is an error of the `save` call that names the step, not a background thread's traceback, and a
checkpoint is complete before the trainer reports it saved.

A byte flipped on disk can still restore "successfully" as garbage, so every checkpoint carries an
`integrity` record: a SHA-256 of the host state (every leaf's path, dtype, shape and bytes) and of the
data iterator's state. `restore` recomputes both and also requires every float to be finite; a mismatch
is a `CheckpointError` naming the step's directory. `restore_latest(fallback=True)` then moves each
damaged newer checkpoint aside (to `<workdir>/corrupt_checkpoints/`, never deleting it) and resumes from
the newest intact one.

Multi-process runs save and restore collectively: every process makes the same calls (orbax
synchronises them). The state is replicated, so orbax writes process 0's host copy once; each process
writes and reads its own data-iterator state (`data/process_I-of-N.json`, grain's layout), so a run
resumes only with the process count that wrote it. The integrity record is process 0's.
"""

import collections
import hashlib
import json
import os
import re
import shutil
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mmlearn.errors import CheckpointError

ITEMS = ("state", "data", "integrity")
CORRUPT_DIR = "corrupt_checkpoints"
# What a damaged checkpoint makes orbax, tensorstore, grain or json raise on restore.
_RESTORE_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError, EOFError)


def state_digest(state: Any) -> str:
  """SHA-256 over every leaf's tree path, dtype, shape and bytes: equal iff the host states are equal."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def iterator_digest(data_iterator: Any) -> str:
  """SHA-256 of an iterator's state: a grain iterator's dict, or the JSON bytes of a saved state."""
  state = data_iterator.get_state()
  state = json.loads(state) if isinstance(state, bytes) else state
  return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


class CheckpointMismatchError(CheckpointError):
  """The checkpoint is intact but holds another model's arrays: never set aside as damaged."""


def array_signature(tree: Any) -> collections.Counter:
  """The multiset of (shape, dtype) of a tree's arrays: what a checkpoint must share with its template."""
  return collections.Counter(
    (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")
  )


def non_finite_leaf(state: Any) -> str | None:
  """The path of the first float leaf holding a NaN or an infinity, else None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.asarray(leaf)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
      return jax.tree_util.keystr(path)
  return None


def remove_unfinished(directory: str) -> None:
  """Deletes the temporary directories of saves that a crash interrupted before their commit.

  Done here, synchronously, rather than by orbax's background clean-up, which can outlive a command
  that fails quickly and then print a traceback at interpreter shutdown.
  """
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(directory, name))


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, read_only: bool = False):
    """`read_only` (tools that evaluate a run) never creates, cleans or rotates anything."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    if not read_only and jax.process_index() == 0:
      remove_unfinished(self.directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=False,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Saves a host copy of `state` (the device buffers may be donated to the next step).

    `data_iterator`: the training iterator, or the state it had after the last batch trained on
    (`prefetch.IteratorState`: what a prefetching loop saves).
    """
    host = jax.device_get(state)
    integrity = {"state_sha256": state_digest(host), "data_sha256": iterator_digest(data_iterator)}
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(host),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          integrity=ocp.args.JsonSave(integrity),
        ),
        force=True,
      )
    except (OSError, ValueError, RuntimeError) as e:
      raise CheckpointError(
        f"could not save the checkpoint of step {step} to {self.step_dir(step)}: {_first_line(e)}"
      ) from e

  def restore(self, step: int, template: Any, data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Returns the state saved at `step` (structured like `template`); restores the iterator in place.

    Verified against the checkpoint's integrity record (checkpoints written before it existed are
    checked for finiteness only). Without `data_iterator` (a tool that only needs the parameters) the
    iterator item is not read, so the caller need not build a training pipeline.
    """
    where = self.step_dir(step)
    template = jax.device_get(template)
    self._check_matches(step, template)
    has_record = os.path.isdir(os.path.join(where, "integrity"))
    items = {"state": ocp.args.StandardRestore(template)}
    if has_record:
      items["integrity"] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except _RESTORE_ERRORS as e:
      raise CheckpointError(f"checkpoint {where} cannot be restored: {_first_line(e)}") from e
    state = restored.state
    record = restored.integrity if has_record else None
    if record is not None and state_digest(state) != record.get("state_sha256"):
      raise CheckpointError(f"checkpoint {where} is corrupt: its state does not match its checksum")
    if (leaf := non_finite_leaf(state)) is not None:
      raise CheckpointError(f"checkpoint {where} holds non-finite values (in state{leaf})")
    if data_iterator is not None:
      self._check_process_count(step)
      try:
        self.manager.restore(
          step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator))
        )
      except _RESTORE_ERRORS as e:
        raise CheckpointError(
          f"checkpoint {where}: the data iterator cannot be restored: {_first_line(e)}"
        ) from e
      checked = record is not None and jax.process_index() == 0
      if checked and iterator_digest(data_iterator) != record.get("data_sha256"):
        raise CheckpointError(f"checkpoint {where} is corrupt: its data iterator does not match its checksum")
    return state

  def restore_latest(
    self, template: Any, data_iterator: grain.DatasetIterator | None = None, *, fallback: bool = False
  ) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint, or (None, template) when there is none.

    A damaged newest checkpoint is an error suggesting `--fallback`; with `fallback`, it is moved to
    `<workdir>/corrupt_checkpoints/<step>` and the next newest is tried.
    """
    while (step := self.latest_step()) is not None:
      if data_iterator is not None:
        self._check_process_count(step)  # A mismatch is not damage: never set aside for it.
      try:
        return step, self.restore(step, template, data_iterator)
      except CheckpointMismatchError:
        raise
      except CheckpointError as e:
        if not fallback:
          older = [s for s in self.manager.all_steps() if s != step]
          hint = f"; --fallback resumes from the newest intact one (older: {sorted(older)})" if older else ""
          raise CheckpointError(f"{e}{hint}") from e
        self._set_aside(step, e)
    return None, template

  def _check_matches(self, step: int, template: Any) -> None:
    """Raises `CheckpointMismatchError` when the step's arrays are not the template's (another config)."""
    where = self.step_dir(step)
    try:
      metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(where) / "state")
    except _RESTORE_ERRORS as e:
      raise CheckpointError(f"checkpoint {where} cannot be read: {_first_line(e)}") from e
    saved = array_signature(getattr(metadata, "tree", metadata))
    expected = array_signature(template)
    if saved != expected:
      only_saved = sorted((saved - expected).elements())[:3]
      only_expected = sorted((expected - saved).elements())[:3]
      raise CheckpointMismatchError(
        f"checkpoint {where} holds another model than the config builds (arrays only in the checkpoint: "
        f"{only_saved}, only in the config's model: {only_expected}); was it trained with another config?"
      )

  def _set_aside(self, step: int, error: CheckpointError) -> None:
    """Moves a damaged checkpoint out of orbax's directory, so a later save of that step is possible."""
    destination = os.path.join(self.workdir, CORRUPT_DIR, str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      if os.path.exists(destination):
        shutil.rmtree(destination)
      os.replace(self.step_dir(step), destination)
    logging.warning("%s; moved to %s, falling back to an older checkpoint", error, destination)
    self.manager.reload()

  def _check_process_count(self, step: int) -> None:
    """Names a process-count mismatch, which grain would report as one missing file."""
    data_dir = os.path.join(self.step_dir(step), "data")
    names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    counts = {int(m.group(1)) for name in names if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
    if counts and jax.process_count() not in counts:
      raise CheckpointError(
        f"the checkpoint at step {step} was written by {max(counts)} processes and this run has "
        f"{jax.process_count()}; resume it with {max(counts)} (each restores its own data-iterator state)"
      )

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(error: BaseException) -> str:
  """An exception's message cut to its first line, without tensorstore's spec (a long JSON dump), led by
  the operating system's reason when tensorstore names one (`No space left on device`)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  message = (lines[0] if lines else "").split(" [tensorstore_spec=")[0]
  reason = re.search(r"os_error_code='(\d+)'", str(error))
  prefix = f"{os.strerror(int(reason[1]))}: " if reason else ""
  return f"{prefix}{type(error).__name__}: {message[:300]}"
