"""Evaluators: one small contract, `Evaluator.run(variables)` yields `(metric_name, value)` pairs.

The trainer only logs what evaluators yield, so a task brings its metrics without touching the loop.
"""

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline, progress


def eval_step(variables: dict[str, Any], batch: dict[str, Any], *, task: Any) -> dict[str, jax.Array]:
  """Per-device: the task's weighted sums on this device's examples, summed over all devices."""
  return lax.psum(task.eval_sums(variables, batch), parallel_lib.AXIS)


class SplitPass:
  """What every evaluator shares: one ordered pass over a split, and its per-device step mapped once.

  Subclasses set `per_device_step(variables, batch, ..., *, task)` and write `run(variables)`. The step
  sees full parameters whatever their layout on the devices (`par.gather_params`).
  """

  per_device_step: Callable

  def __init__(
    self,
    task: Any,
    par: parallel_lib.DataParallel,
    source: Any,
    *,
    split: str,
    batch_size: int,
    max_tokens: int,
    transform: Any = None,
  ):
    self.task, self.par, self.source, self.split = task, par, source, split
    self.batch_size, self.max_tokens, self.transform = batch_size, max_tokens, transform
    step = functools.partial(type(self).per_device_step, task=task)

    def per_device(variables: dict[str, Any], *args: Any) -> Any:
      return step({**variables, "params": par.gather_params(variables["params"])}, *args)

    self._step = par.map(per_device, sharded_args=(1,))

  def batches(self) -> Iterator[dict[str, Any]]:
    """This process's share of the split, padded batches with `weight` (see `pipeline.eval_batches`).

    A pass longer than `progress.QUIET_S` logs progress lines with an ETA (every evaluator walks its
    split through here, so none runs silently for minutes).
    """
    batches = pipeline.eval_batches(
      self.source, batch_size=self.batch_size, max_tokens=self.max_tokens, transform=self.transform
    )
    total = pipeline.num_eval_batches(len(self.source), self.batch_size)
    return progress.track(batches, f"evaluating {self.split}", total, unit="batches")


class SplitEvaluator(SplitPass):
  """Evaluates a task on a whole split, every example exactly once, from the task's summed statistics."""

  per_device_step = staticmethod(eval_step)

  def run(self, variables: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    totals = None
    for batch in self.batches():
      sums = self._step(variables, self.par.shard(batch))
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    for name, value in self.task.summarize(jax.device_get(totals)).items():
      yield f"{self.split}/{name}", value
