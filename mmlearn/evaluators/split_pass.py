"""What evaluators share: one ordered pass over a split, and a per-device step mapped once over the devices.

Every evaluator follows one small contract, `run(variables)` yields `(metric_name, value)` pairs
(`mmlearn.tasks.contract.Evaluator`); the trainer only logs what they yield, so a task brings its
metrics without touching the loop. An evaluator that computes on the devices builds a `SplitPass` with
its per-device step (which sees full parameters whatever their layout: `par.gather_params`) and walks
the split's padded batches with it.
"""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline, progress
from mmlearn.data.pipeline import EvalTransform, Source
from mmlearn.tasks.contract import PyTree, Variables


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
