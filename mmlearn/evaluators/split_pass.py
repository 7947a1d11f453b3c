"""What evaluators share: one ordered pass over a split, and a per-device step mapped once over the devices.

Every evaluator follows one small contract, `run(variables)` yields `(metric_name, value)` pairs
(`mmlearn.tasks.contract.Evaluator`); the trainer only logs what they yield, so a task brings its
metrics without touching the loop. An evaluator that computes on the devices builds a `SplitPass` with
its per-device step (which sees full parameters whatever their layout: `par.gather_params`) and walks
the split's padded batches with it. One that needs a value per example (embeddings to rank or to fit a
probe on) builds an `ExampleOutputs` instead: the same pass, gathered back into source order.
`feature_values` (labels read from the records) and `check_modality` are the evaluators' shared reads
and option checks.
"""

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline, progress
from mmlearn.data.pipeline import EvalTransform, Source
from mmlearn.errors import ConfigError
from mmlearn.tasks.contract import Batch, Embedder, PyTree, Variables

_READ_CHUNK = 1024  # Records read at once by `feature_values`.


class SplitPass:
  """The batches of one split, in order, every example once, and `step(variables, batch, *args)` mapped.

  `per_device_step(variables, batch, *args)` is per-device code (it sees its device's slice of the
  batch, and reduces over devices itself); `step` maps it with `par` and returns its replicated output.
  """

  def __init__(
    self,
    per_device_step: Callable[..., PyTree],
    par: parallel_lib.DataParallel,
    source: Source,
    *,
    split: str,
    batch_size: int,
    max_tokens: int,
    transform: EvalTransform | None = None,
  ):
    self.par, self.source, self.split = par, source, split
    self.batch_size, self.max_tokens, self.transform = batch_size, max_tokens, transform

    def per_device(variables: Variables, *args: Any) -> PyTree:
      return per_device_step({**variables, "params": par.gather_params(variables["params"])}, *args)

    self._mapped = par.map(per_device, sharded_args=(1,))

  def step(self, variables: Variables, batch: dict[str, np.ndarray], *args: Any) -> PyTree:
    """The mapped step on one host batch (this process's share, laid out over its devices)."""
    return self._mapped(variables, self.par.shard(batch), *args)

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the split, padded batches with `weight` (see `pipeline.eval_batches`).

    A pass longer than `progress.QUIET_S` logs progress lines with an ETA (every evaluator walks its
    split through here, so none runs silently for minutes).
    """
    batches = pipeline.eval_batches(
      self.source, batch_size=self.batch_size, max_tokens=self.max_tokens, transform=self.transform
    )
    total = pipeline.num_eval_batches(len(self.source), self.batch_size)
    return progress.track(batches, f"evaluating {self.split}", total, unit="batches")


class ExampleOutputs:
  """`outputs(variables, batch)` -> `{name: [B, ...]}` for every example of a split, in source order.

  `outputs` is per-device code (the model's embeddings of the device's examples); its values are
  all-gathered over the devices. Each process reads its share `source[process::count]` (see
  `pipeline.eval_batches`); every row is tagged with its source index before sharding, and the gathered
  indices must be exactly 0..N-1, so padding is dropped and nothing is seen twice.
  """

  def __init__(
    self,
    outputs: Callable[[Variables, Batch], dict[str, jax.Array]],
    par: parallel_lib.DataParallel,
    source: Source,
    *,
    split: str,
    batch_size: int,
    max_tokens: int,
  ):
    self.source, self.split = source, split

    def per_device(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      out = dict(outputs(variables, batch)) | {"weight": batch["weight"], "index": batch["index"]}
      return jax.tree.map(lambda x: lax.all_gather(x, parallel_lib.AXIS, tiled=True), out)

    self.split_pass = SplitPass(
      per_device, par, source, split=split, batch_size=batch_size, max_tokens=max_tokens
    )

  def __call__(self, variables: Variables) -> dict[str, np.ndarray]:
    count, process = jax.process_count(), jax.process_index()
    local_batch = self.split_pass.batch_size // count
    parts = []
    for b, batch in enumerate(self.split_pass.batches()):
      position = b * local_batch + np.arange(local_batch)
      batch["index"] = np.where(batch["weight"] > 0, process + count * position, -1).astype(np.int32)
      parts.append(jax.device_get(self.split_pass.step(variables, batch)))
    gathered = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    real = gathered.pop("weight") > 0
    index = gathered.pop("index")[real]
    order = np.argsort(index)
    if not np.array_equal(index[order], np.arange(len(self.source))):
      raise RuntimeError(f"the pass over {self.split} did not see every example exactly once")
    return {key: value[real][order] for key, value in gathered.items()}


def feature_values(source: Source, name: str, *, split: str) -> np.ndarray:
  """Feature `name` (a label, an attribute) of every example of `source`, as stored.

  Read from the records under a view (`preprocess.ExampleView.records`), so no image is decoded for it.
  """
  records = getattr(source, "records", source)
  getitems = getattr(records, "__getitems__", None)
  values = []
  for start in range(0, len(records), _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, len(records))))
    examples = getitems(keys) if getitems else [records[i] for i in keys]
    for example in examples:
      if name not in example:
        known = ", ".join(sorted(example))
        raise ConfigError(f"split {split!r} has no feature {name!r}; its features: {known}")
      values.append(example[name])
  return np.asarray(values)


def check_modality(task: Embedder, modality: str, option: str, where: str) -> None:
  """A `ConfigError` naming evaluator `where`'s `option` if `modality` is not one the task embeds."""
  if modality not in task.modalities:
    raise ConfigError(
      f"{where}: {option}={modality!r} is not a modality of this task; it has {', '.join(task.modalities)}"
    )
