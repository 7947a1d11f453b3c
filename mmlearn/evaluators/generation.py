"""Evaluation of the MVAE task (`mmlearn.tasks.mvae`): the test ELBO over a split, then sample grids.

`GenerationEvaluator` sums the task's reported metrics (`elbo` and its parts, at beta = 1; see
`mmlearn.tasks.mvae`) over a split with fixed RNG keys, then yields sample grids as
`metric_writer.Image`s, `<split>/samples/<c>_to_<t>`: for the first `mvae.grid_conditions` examples of
the split, the real x_t, then `mvae.grid_samples` samples of x_t given x_c alone, for every array target t.

The ELBO sums use fixed keys (`EVAL_SEED`, folded with the batch number, then with each example's index
in the global batch), so every evaluation of the same parameters gives the same numbers on any number of
devices; the grids use `GRID_SEED`, so grids of successive evaluations differ only by the parameters.
This module knows the task only by its methods (`eval_sums`, `summarize`, `sample` and the grid
settings), so the task imports its evaluator and not the other way round.
"""

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn import rngs
from mmlearn.data import pipeline
from mmlearn.evaluators.image_grid import sample_grid
from mmlearn.evaluators.split_pass import SplitPass
from mmlearn.runs.metric_writer import Image

EVAL_SEED = 0  # Of evaluation's z samples: every evaluation of the same parameters gives the same numbers.
GRID_SEED = 1


def eval_step(variables: Any, batch: dict[str, Any], rng: jax.Array, *, task: Any) -> dict[str, jax.Array]:
  """Per-device: the `MVAETask`'s weighted sums, over all devices, with per-example keys.

  Each example's z is drawn from the batch's `rng` folded with its index in the global batch, so the sums
  do not depend on the number of devices.
  """
  rng = rngs.example_keys(rng, jax.tree.leaves(batch)[0].shape[0])
  return lax.psum(task.eval_sums(variables, batch, rng), parallel_lib.AXIS)


def weighted_means(sums: dict[str, Any]) -> dict[str, float]:
  """Each weighted sum of `eval_sums` divided by the summed weight (`count`): a generator's `summarize`."""
  count = float(sums["count"])
  return {k: float(v) / count for k, v in sums.items() if k != "count"}


class GenerationEvaluator(SplitPass):
  """Test ELBO (and its parts) over a whole split, then (with `grids`) sample grids of its first examples."""

  per_device_step = staticmethod(eval_step)

  def __init__(self, *args: Any, grids: bool = True, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self.grids = grids

  def run(self, variables: Any) -> Iterator[tuple[str, Any]]:
    totals = None
    for b, batch in enumerate(self.batches()):
      rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), b)
      sums = self._step(variables, self.par.shard(batch), rng)
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    for name, value in self.task.summarize(jax.device_get(totals)).items():
      yield f"{self.split}/{name}", value
    if self.grids:
      yield from self.sample_grids(variables)

  def sample_grids(self, variables: Any) -> Iterator[tuple[str, Image]]:
    """`<split>/samples/<condition>_to_<target>` for every array target and every other modality."""
    task, count = self.task, min(self.task.grid_conditions, len(self.source))
    if count <= 0 or task.grid_samples <= 0:
      return
    # The first examples of the split, the same on every process (only process 0 writes them).
    batch = next(
      pipeline.eval_batches(
        self.source, batch_size=count, max_tokens=self.max_tokens, process_index=0, process_count=1
      )
    )
    batch = {k: v for k, v in batch.items() if k != "weight"}
    variables = jax.device_get(variables)
    for target in task.array_modalities:
      for condition in (m for m in task.modalities if m != target):
        samples, _ = task.sample(
          variables,
          batch,
          jax.random.PRNGKey(GRID_SEED),
          task.temperature,
          condition=(condition,),
          target=target,
          num_samples=task.grid_samples,
        )
        grid = sample_grid(batch[target], np.asarray(samples))
        yield f"{self.split}/samples/{condition}_to_{target}", Image(grid)


class SampleGridEvaluator(GenerationEvaluator):
  """Only the sample grids (the `samples` evaluator), e.g. on a schedule apart from the ELBO's."""

  def run(self, variables: Any) -> Iterator[tuple[str, Any]]:
    return self.sample_grids(variables)
