"""The `loss` evaluator: the mean over a split of a task's per-example terms (`ExampleLosses`).

The MVAE's ELBO and its parts at beta = 1, the flow's velocity loss with every condition kept: each is
a mean of per-example terms, so one evaluator serves both. Per batch and device it sums each term
weighted by `weight` (padding weighs 0) and the weight itself, summed over devices; the split's value is
the sum over the weight.

The terms use fixed keys (`EVAL_SEED`, folded with the batch number, then with each example's index in
the global batch: `mmlearn.rngs.example_keys`), so every evaluation of the same parameters gives the
same numbers on any number of devices.
"""

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn import rngs
from mmlearn.data.pipeline import Source
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.evaluators.split_pass import SplitPass
from mmlearn.tasks.contract import Batch, ExampleLosses, Metric, Variables

EVAL_SEED = 0  # Of the terms' random draws: every evaluation of the same parameters gives the same numbers.

TermsFn = Callable[[Variables, Batch, jax.Array], dict[str, jax.Array]]


def weighted_sums(terms: TermsFn, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
  """Per-device: each term's sum over this device's examples weighted by `weight`, and the weights' sum,
  summed over all devices. Each example draws from `rng` folded with its index in the global batch."""
  weight = jnp.asarray(batch["weight"], jnp.float32)
  keys = rngs.example_keys(rng, weight.shape[0])
  sums = {name: (value * weight).sum() for name, value in terms(variables, batch, keys).items()}
  return lax.psum({"count": weight.sum(), **sums}, parallel_lib.AXIS)


class MeanLossEvaluator:
  """Walks the split with a `SplitPass` whose step returns `weighted_sums`; yields each term's mean."""

  def __init__(self, split_pass: SplitPass):
    self.split_pass = split_pass

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    totals = None
    for b, batch in enumerate(self.split_pass.batches()):
      rng = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), b)
      sums = self.split_pass.step(variables, batch, rng)
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    for name, value in totals.items():
      yield f"{self.split_pass.split}/{name}", float(value) / count


@evaluator("loss", requires=ExampleLosses)
def build(task: ExampleLosses, context: EvalContext, source: Source, *, split: str) -> MeanLossEvaluator:
  """The mean of the task's per-example terms over the split (the MVAE's ELBO, the flow's loss)."""

  def per_device(variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    return weighted_sums(task.example_losses, variables, batch, rng)

  split_pass = SplitPass(
    per_device, context.par, source, split=split, batch_size=context.batch_size, max_tokens=context.max_tokens
  )
  return MeanLossEvaluator(split_pass)
