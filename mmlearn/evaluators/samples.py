"""The `samples` evaluator: grids of a generator's samples of every array modality given each other one.

For the first `grid_conditions` examples of the split, each row of `<split>/samples/<c>_to_<t>` shows
the real x_t, then `grid_samples` samples of x_t given x_c alone, at the run's temperature. The grids use
`GRID_SEED`, so grids of successive evaluations differ only by the parameters. The metric writer saves
them as PNGs in the workdir and to TensorBoard.
"""

from collections.abc import Iterator

import jax
import numpy as np

from mmlearn.data import pipeline
from mmlearn.data.pipeline import Source
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.metrics.images import Image, sample_grid
from mmlearn.tasks.contract import Generator, Variables

GRID_SEED = 1


class SampleGridEvaluator:
  def __init__(self, generator: Generator, source: Source, *, split: str, max_tokens: int):
    self.generator, self.source, self.split, self.max_tokens = generator, source, split, max_tokens

  def run(self, variables: Variables) -> Iterator[tuple[str, Image]]:
    """`<split>/samples/<condition>_to_<target>` for every array target and every other modality."""
    generator, count = self.generator, min(self.generator.grid_conditions, len(self.source))
    if count <= 0 or generator.grid_samples <= 0:
      return
    # The first examples of the split, the same on every process (only process 0 writes them).
    batch = next(
      pipeline.eval_batches(
        self.source, batch_size=count, max_tokens=self.max_tokens, process_index=0, process_count=1
      )
    )
    batch = {k: v for k, v in batch.items() if k != "weight"}
    variables = jax.device_get(variables)
    for target in generator.array_modalities:
      for condition in (m for m in generator.modalities if m != target):
        samples, _ = generator.sample(
          variables,
          batch,
          jax.random.PRNGKey(GRID_SEED),
          generator.temperature,
          condition=(condition,),
          target=target,
          num_samples=generator.grid_samples,
        )
        grid = sample_grid(batch[target], np.asarray(samples))
        yield f"{self.split}/samples/{condition}_to_{target}", Image(grid)


@evaluator("samples", requires=Generator)
def build(task: Generator, context: EvalContext, source: Source, *, split: str) -> SampleGridEvaluator:
  """Sample grids of every array modality given each other one (images in TensorBoard)."""
  return SampleGridEvaluator(task, source, split=split, max_tokens=context.max_tokens)
