"""Checkpoints of the train state (params, optimizer state, step, RNG) and the data iterator, together.

Saving both in one orbax step is what makes a resumed run bitwise identical to an uninterrupted one:
the restored iterator yields exactly the batches the interrupted run would have seen next. orbax
writes each step to a temporary directory and renames it when complete, so an interruption never
leaves a half-written checkpoint that looks valid. Saves are synchronous: a failed write (a full disk)
is an error of the `save` call that names the step, not a background thread's traceback, and a
checkpoint is complete before the trainer reports it saved (so the state's buffers may then be donated).

The state is handed to orbax as the device arrays it is (never gathered to one host): orbax writes each
array shard by shard, every process the shards its devices hold (one copy of replicated leaves), so a
state sharded over the devices (`parallel.DataParallel.place_state`) is never whole in any memory.
`restore` reads into the template's layout: a template placed on a mesh (leaves with a `NamedSharding`)
gets arrays in that layout, each device reading its own slice, so a run resumes on another device count
by placing its template on its own mesh; any other template (host arrays: the tools) gets host arrays.

A byte flipped on disk can still restore "successfully" as garbage, so every checkpoint carries an
`integrity` record: a checksum of every state leaf (with its path, dtype and shape) and a SHA-256 of the
data iterator's state. The leaf checksum is computed where the leaf lives (each shard on its device,
under `jit`, the partial sums added on the host) and does not depend on how the leaf is sharded: it is
a sum mod 2**32 of each element's bits times an odd multiplier derived from the element's flat index
(twice, with two multiplier families). Integer addition is associative, so any sharding and reduction
order gives the same value, while any change of one element changes it and moved elements change it
with probability 1 - 2**-64. `restore` recomputes both and also requires every float to be finite (on
device too); a mismatch is a `CheckpointError` naming the step's directory. Records written before the
checksum (`state_sha256`, a SHA-256 of the host state) are still verified.
`restore_latest(fallback=True)` then moves each damaged newer checkpoint aside (to
`<workdir>/corrupt_checkpoints/`, never deleting it) and resumes from the newest intact one.

Multi-process runs save and restore collectively: every process makes the same calls (orbax
synchronises them); each process writes and reads its own data-iterator state
(`data/process_I-of-N.json`, grain's layout), so a run resumes only with the process count that wrote
it. The integrity record is process 0's.
"""

import collections
import hashlib
import json
import os
import re
import shutil
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from mmlearn.errors import CheckpointError

State = TypeVar("State")  # The train state: restored in the structure of its template.

ITEMS = ("state", "data", "integrity")
CORRUPT_DIR = "corrupt_checkpoints"
# What a damaged checkpoint makes orbax, tensorstore, grain or json raise on restore.
_RESTORE_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError, EOFError)


def state_digest(state: Any) -> str:
  """SHA-256 over every leaf's tree path, dtype, shape and bytes of a host copy (the record of checkpoints
  written before `state_checksum`; also a test's equality oracle)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _mix(index: jax.Array, seed: int) -> jax.Array:
  """An odd uint32 multiplier from a uint32 flat index (murmur3's finaliser; all arithmetic mod 2**32)."""
  h = index * jnp.uint32(0x9E3779B1) + jnp.uint32(seed)
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return (h ^ (h >> 16)) | jnp.uint32(1)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The element bits as uint32 (64-bit elements as two uint32 words, on a trailing axis)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = np.dtype(x.dtype).itemsize
  if size in (4, 8):
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)


@jax.jit
def _shard_check(x: jax.Array, start: jax.Array, strides: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(uint32[2] partial checksum, all finite) of one shard, on its own device: no collective.

  `start`: the shard's offset in the leaf (of its uint32 words), `strides`: the leaf's row-major
  strides; both are arguments, so one small program serves every shard of a shape and dtype.
  """
  bits = _as_uint32(x)
  index = jnp.zeros(bits.shape, jnp.uint32)
  for d in range(bits.ndim):
    index = index + (lax.broadcasted_iota(jnp.uint32, bits.shape, d) + start[d]) * strides[d]
  sums = jnp.stack([jnp.sum(bits * _mix(index, seed), dtype=jnp.uint32) for seed in (0, 0x5BD1E995)])
  finite = jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  return sums, finite


def _pieces(x: Any) -> list[tuple[Any, tuple[int, ...]]]:
  """(data, offset) of each piece of a leaf this process checks: one copy of each shard it holds."""
  if isinstance(x, jax.Array):
    return [
      (shard.data, tuple(i.start or 0 for i in shard.index) + (0,) * (x.ndim - len(shard.index)))
      for shard in x.addressable_shards
      if shard.replica_id == 0
    ]
  # A host leaf holds the same value on every process: counted once, by process 0.
  return [(x, (0,) * x.ndim)] if jax.process_index() == 0 else []


def state_checks(state: Any) -> tuple[dict[str, str], str | None]:
  """(`state_checksum`'s record, the path of the first non-finite float leaf or None).

  Each shard is checked on its own device and the partial sums are added mod 2**32 on the host (across
  processes too): a shard-local reduction has no collective, so it cannot contend with the train step's.
  """
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  leaves = [leaf if isinstance(leaf, jax.Array) else np.ascontiguousarray(leaf) for _, leaf in flat]
  # Host 64-bit leaves go in as their uint32 words: jit would otherwise narrow them (x64 is off).
  leaves = [
    x.view(np.uint32).reshape(*x.shape, 2) if isinstance(x, np.ndarray) and x.dtype.itemsize == 8 else x
    for x in leaves
  ]
  pending = []
  for x in leaves:
    shape = (*x.shape, 2) if np.dtype(x.dtype).itemsize == 8 else tuple(x.shape)
    strides = np.cumprod((1, *shape[:0:-1]), dtype=np.uint64)[::-1].astype(np.uint32)  # Mod 2**32.
    pending.append(
      [
        _shard_check(data, np.array(offset + (0,) * (len(shape) - len(offset)), np.uint32), strides)
        for data, offset in _pieces(x)
      ]
    )
  checks = jax.device_get(pending)  # One host sync for all shards.
  # A process may hold no piece of a leaf (the copies other processes count): it adds zeros.
  zero = np.zeros(2, np.uint32)
  sums = np.array(
    [np.sum([zero, *(c[0] for c in leaf)], axis=0, dtype=np.uint32) for leaf in checks], np.uint32
  )
  finite = np.array([all(bool(c[1]) for c in leaf) for leaf in checks])
  if jax.process_count() > 1:
    gathered = multihost_utils.process_allgather((sums, finite))
    sums, finite = np.asarray(np.sum(gathered[0], axis=0, dtype=np.uint32)), np.all(gathered[1], axis=0)
  record, bad = {}, None
  for (path, leaf), words, ok in zip(flat, sums, finite, strict=True):
    name = jax.tree_util.keystr(path)
    shape = ",".join(map(str, np.shape(leaf)))
    dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
    record[name] = f"{dtype.name}[{shape}]:{int(words[0]):08x}{int(words[1]):08x}"
    if not ok and bad is None:
      bad = name
  return record, bad


def state_checksum(state: Any) -> dict[str, str]:
  """Per leaf path, `dtype[shape]:checksum`, computed on device and independent of the sharding (see the
  module docstring): equal for a state and its restored copy on any device count."""
  return state_checks(state)[0]


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


def abstract_template(template: Any) -> Any:
  """What orbax restores into: leaves placed with a `NamedSharding` become `jax.ShapeDtypeStruct`s with
  that sharding (restored in place, shard by shard); every other leaf becomes a host array."""

  def target(leaf):
    if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return jax.device_get(leaf)

  return jax.tree.map(target, template)


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
  def __init__(self, workdir: str, *, keep: int, read_only: bool = False, subdir: str = "checkpoints"):
    """`read_only` (tools that evaluate a run) never creates, cleans or rotates anything; `subdir` is
    the directory under `workdir` (`best` for the selected checkpoint, `mmlearn.runs.selection`)."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, subdir)
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
    """Saves `state` as it lies (device arrays, sharded or not: never gathered; host arrays too).

    `data_iterator`: the training iterator, or the state it had after the last batch trained on
    (`prefetch.IteratorState`: what a prefetching loop saves). The save is complete on return, so the
    state's device buffers may then be donated to the next step.
    """
    integrity = {"state_checksum": state_checksum(state), "data_sha256": iterator_digest(data_iterator)}
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          integrity=ocp.args.JsonSave(integrity),
        ),
        force=True,
      )
    except (OSError, ValueError, RuntimeError) as e:
      raise CheckpointError(
        f"could not save the checkpoint of step {step} to {self.step_dir(step)}: {_first_line(e)}"
      ) from e

  def restore(self, step: int, template: State, data_iterator: grain.DatasetIterator | None = None) -> State:
    """Returns the state saved at `step` (structured like `template`); restores the iterator in place.

    Leaves of `template` placed on a mesh come back in that layout (on another device count than the
    run that saved them, too); other leaves come back as host arrays. Verified against the checkpoint's
    integrity record (checkpoints written before it existed are checked for finiteness only). Without
    `data_iterator` (a tool that only needs the parameters) the iterator item is not read, so the
    caller need not build a training pipeline.
    """
    where = self.step_dir(step)
    self._check_matches(step, template)
    has_record = os.path.isdir(os.path.join(where, "integrity"))
    items = {"state": ocp.args.StandardRestore(abstract_template(template))}
    if has_record:
      items["integrity"] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except _RESTORE_ERRORS as e:
      raise CheckpointError(f"checkpoint {where} cannot be restored: {_first_line(e)}") from e
    state = restored.state
    record = restored.integrity if has_record else None
    checksum, leaf = state_checks(state)
    if record is not None and (
      ("state_checksum" in record and checksum != record["state_checksum"])
      or ("state_sha256" in record and state_digest(state) != record["state_sha256"])
      or not {"state_checksum", "state_sha256"} & set(record)
    ):
      raise CheckpointError(f"checkpoint {where} is corrupt: its state does not match its checksum")
    if leaf is not None:
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
      if (
        record is not None
        and jax.process_index() == 0
        and iterator_digest(data_iterator) != record.get("data_sha256")
      ):
        raise CheckpointError(f"checkpoint {where} is corrupt: its data iterator does not match its checksum")
    return state

  def restore_latest(
    self, template: State, data_iterator: grain.DatasetIterator | None = None, *, fallback: bool = False
  ) -> tuple[int | None, State]:
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
