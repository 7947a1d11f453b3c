"""Checkpoints of the train state (params, optimizer state, step, RNG) and the data iterator, together.

Saving both in one orbax step is what makes a resumed run bitwise identical to an uninterrupted one:
the restored iterator yields exactly the batches the interrupted run would have seen next. orbax
writes each step to a temporary directory and renames it when complete, so an interruption or a crash
never leaves a half-written checkpoint that looks valid.

Multi-process runs save and restore collectively: every process makes the same calls (orbax
synchronises them). The state is replicated, so orbax writes process 0's host copy once; each process
writes and reads its own data-iterator state (`data/process_I-of-N.json`, grain's layout), so a run
resumes only with the process count that wrote it.
"""

import os
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
    """Saves a host copy of `state` (the device buffers may be donated to the next step)."""
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator),
      ),
      force=True,
    )

  def restore(self, step: int, template: Any, data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Returns the state saved at `step` (structured like `template`); restores the iterator in place.

    Without `data_iterator` (e.g. a tool that only needs the parameters) the iterator item is not read,
    so the caller need not build a training pipeline.
    """
    items = {"state": ocp.args.StandardRestore(jax.device_get(template))}
    if data_iterator is not None:
      self._check_process_count(step)
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def _check_process_count(self, step: int) -> None:
    """Names a process-count mismatch, which grain would report as one missing file."""
    data_dir = os.path.join(self.directory, str(step), "data")
    names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    counts = {int(m.group(1)) for name in names if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
    if counts and jax.process_count() not in counts:
      raise ValueError(
        f"the checkpoint at step {step} was written by {max(counts)} processes and this run has "
        f"{jax.process_count()}; resume it with {max(counts)} (each restores its own data-iterator state)"
      )

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
