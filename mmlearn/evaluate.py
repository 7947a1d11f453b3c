"""Evaluators: one small contract, `Evaluator.run(params)` yields `(metric_name, value)` pairs.

The trainer only logs what evaluators yield, so a task brings its metrics without touching the loop.
"""

import functools
from collections.abc import Iterator
from typing import Any

import jax
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline


def eval_step(params: Any, batch: dict[str, Any], *, task: Any) -> dict[str, jax.Array]:
  """Per-device: the task's weighted sums on this device's examples, summed over all devices."""
  return lax.psum(task.eval_sums(params, batch), parallel_lib.AXIS)


class SplitEvaluator:
  """Evaluates a task on a whole split, every example exactly once."""

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
    self._step = par.map(functools.partial(eval_step, task=task), sharded_args=(1,))

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    totals = None
    batches = pipeline.eval_batches(
      self.source, batch_size=self.batch_size, max_tokens=self.max_tokens, transform=self.transform
    )
    for batch in batches:
      sums = self._step(params, self.par.shard(batch))
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    for name, value in self.task.summarize(jax.device_get(totals)).items():
      yield f"{self.split}/{name}", value
