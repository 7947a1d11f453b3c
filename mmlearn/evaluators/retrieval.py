"""The `retrieval` evaluator: embeds a whole split once, then ranks it both ways
(`mmlearn.metrics.retrieval`).

Every split is ranked with the paired item as the only right answer (rule "pair", the headline and the
task's summary metric). The task's `relevance` adds a lenient rule beside it: feature names such as
`("shape", "colour", "size", "quadrant")` or `("label",)` count any item whose features all agree (rule
"same_shape_colour_size_quadrant", "same_label"). The rule is part of every metric name, e.g.
`test/pair/audio_to_image/R@1` and `test/same_label/audio_to_image/R@1`, so a number never travels
without its rule; with a relevance rule, `pair/ceiling/...` is what the paired rule allows when a pair
is known only by its description. With `random_baseline`, every metric is also reported for random unit
embeddings (`.../random/...`), the chance level of each rule.
"""

from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from mmlearn import parallel as parallel_lib
from mmlearn.data.pipeline import Source
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.evaluators.split_pass import ExampleOutputs
from mmlearn.metrics import retrieval as retrieval_metrics
from mmlearn.tasks.contract import Batch, Embedder, Metric, Variables

RANDOM_BASELINE_SEED = 0

EmbedFn = Callable[[Variables, Batch], dict[str, jax.Array]]


def relevance_rule(relevance: Sequence[str]) -> str:
  """The name of the lenient rule of `relevance` ("same_label"), or "pair" without one."""
  return "same_" + "_".join(relevance) if relevance else "pair"


def relevance_keys(source: Source, relevance: Sequence[str]) -> np.ndarray:
  """One id per example of `source`; examples are relevant to each other when their ids are equal."""
  if not relevance:
    return np.arange(len(source))
  examples = [source[i] for i in range(len(source))]
  return retrieval_metrics.description_keys([np.stack([ex[f] for ex in examples]) for f in relevance])


class RetrievalEvaluator:
  """Embeds a whole split once, then reports R@1/5/10, median rank and mAP both ways."""

  def __init__(
    self,
    embed: EmbedFn,
    modalities: tuple[str, ...],
    par: parallel_lib.DataParallel,
    source: Source,
    *,
    split: str,
    batch_size: int,
    max_tokens: int,
    relevance: Sequence[str] = (),
    query_chunk: int = 512,
    random_baseline: bool = False,
  ):
    self.modalities, self.source, self.split = modalities, source, split
    self.relevance, self.query_chunk, self.random_baseline = tuple(relevance), query_chunk, random_baseline

    def embeddings(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      return {m: e for m, e in embed(variables, batch).items() if m in modalities}

    self.outputs = ExampleOutputs(
      embeddings, par, source, split=split, batch_size=batch_size, max_tokens=max_tokens
    )

  def embed_split(self, variables: Variables) -> dict[str, np.ndarray]:
    """`{modality: [N, D]}` for every example of the split, in source order, padding dropped."""
    return self.outputs(variables)

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    """The paired item is the headline rule; a relevance rule adds its lenient rule beside it."""
    embeddings = self.embed_split(variables)
    rules = {"pair": np.arange(len(self.source))}
    description = None
    if self.relevance:
      description = relevance_keys(self.source, self.relevance)
      rules[relevance_rule(self.relevance)] = description
    logging.info("retrieval on %s (%d items): rules %s", self.split, len(self.source), ", ".join(rules))
    noise = None
    if self.random_baseline:  # Embeddings uniform on the sphere: the chance level of each rule.
      rng = np.random.default_rng(RANDOM_BASELINE_SEED)
      noise = {m: rng.standard_normal(e.shape).astype(np.float32) for m, e in embeddings.items()}
      noise = {m: x / np.linalg.norm(x, axis=1, keepdims=True) for m, x in noise.items()}
    for rule, keys in rules.items():
      yield from self._directions(embeddings, keys, f"{self.split}/{rule}")
      if noise is not None:
        yield from self._directions(noise, keys, f"{self.split}/{rule}/random")
    if description is not None:  # What the paired rule allows when a pair is known only by its description.
      a, b = self.modalities
      for name, value in retrieval_metrics.pair_ceiling(description, description).items():
        for query, target in ((a, b), (b, a)):
          yield f"{self.split}/pair/ceiling/{query}_to_{target}/{name}", value

  def _directions(
    self, embeddings: dict[str, np.ndarray], keys: np.ndarray, prefix: str
  ) -> Iterator[tuple[str, Metric]]:
    a, b = self.modalities
    for query, target in ((a, b), (b, a)):
      metrics = retrieval_metrics.retrieval_metrics(
        embeddings[query], embeddings[target], keys, keys, chunk=self.query_chunk
      )
      for name, value in metrics.items():
        yield f"{prefix}/{query}_to_{target}/{name}", value


def for_task(
  task: Embedder,
  par: parallel_lib.DataParallel,
  source: Source,
  *,
  split: str,
  batch_size: int,
  max_tokens: int,
) -> RetrievalEvaluator:
  """The evaluator of a dual encoder's embeddings, with its relevance and ranking settings."""
  return RetrievalEvaluator(
    task.embed,
    task.modalities,
    par,
    source,
    split=split,
    batch_size=batch_size,
    max_tokens=max_tokens,
    relevance=task.relevance,
    query_chunk=task.query_chunk,
    random_baseline=task.random_baseline,
  )


@evaluator("retrieval", requires=Embedder)
def build(task: Embedder, context: EvalContext, source: Source, *, split: str) -> RetrievalEvaluator:
  """Recall@K, median rank and mAP both ways."""
  return for_task(
    task, context.par, source, split=split, batch_size=context.batch_size, max_tokens=context.max_tokens
  )
