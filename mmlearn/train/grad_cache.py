"""Gradient caching (GradCache, Gao et al. 2021): a contrastive loss's full-batch gradient, in chunks.

A contrastive loss couples every example of the global batch (in-batch negatives), so averaging the
gradients of chunks (`mmlearn.train.step.accumulated_gradient`) would train a different loss. But the
examples meet only through their embeddings, and the loss of the embeddings is cheap. So, per device,
for a task that is `ChunkedContrastive` and `config.microbatch_size` > 0:

1. embed every chunk without keeping activations (`lax.map`, outside any gradient): every embedding of
   the device's batch, [B, D] per modality, which is small;
2. the loss of those embeddings, as the task computes it (over the global batch, all-gathered), and its
   gradient with respect to the embeddings and, directly, to the parameters the loss reads (the
   temperature `log_scale`, SigLIP's `bias`). The transpose of the loss's `all_gather` brings each device
   the other devices' share of its embeddings' gradient, as in the uncached step;
3. per chunk, embed again under `jax.vjp` and pull the chunk's cached embedding gradient back to the
   parameters; the sum over chunks (`lax.scan`, so activations are one chunk's) plus step 2's direct
   part is the whole batch's gradient.

The chain rule makes this the full-batch gradient up to float rounding; the price is a second forward
pass. Chunk `i`'s dropout key is `fold_in(dropout_rng, i)` in steps 1 and 3 alike (as in gradient
accumulation), so the recomputed embeddings are the cached ones. Models with mutable collections
(BatchNorm) are refused before this runs (`step.microbatch_chunks`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from mmlearn.tasks.contract import Batch, ChunkedContrastive, PyTree, Variables


def cached_gradient(
  task: ChunkedContrastive,
  variables_of: Callable[[PyTree], Variables],
  params: PyTree,
  batch: Batch,
  dropout_rng: jax.Array | None,
  num_chunks: int,
) -> tuple[dict[str, jax.Array], PyTree]:
  """(metrics, gradient of this device's loss with respect to `params`) of the whole device batch.

  `variables_of(params)` is what the task is given (the trainer's: LoRA's merged parameters plus the
  model's collections); the gradient is taken through it, with respect to `params`.
  """
  chunks = jax.tree.map(lambda x: x.reshape(num_chunks, x.shape[0] // num_chunks, *x.shape[1:]), dict(batch))
  indices = jnp.arange(num_chunks)

  def embed(p: PyTree, chunk: Batch, index: jax.Array) -> dict[str, jax.Array]:
    key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    return task.embed_for_training(variables_of(p), chunk, key)

  constant = lax.stop_gradient(params)
  per_chunk = lax.map(lambda xs: embed(constant, *xs), (chunks, indices))  # {name: [chunks, chunk, D]}
  embeddings = jax.tree.map(lambda e: e.reshape(-1, *e.shape[2:]), per_chunk)

  def embedding_loss(p: PyTree, e: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    return task.embedding_loss(variables_of(p)["params"], e)

  grad_fn = jax.value_and_grad(embedding_loss, argnums=(0, 1), has_aux=True)
  (_, metrics), (direct, embedding_grads) = grad_fn(params, embeddings)
  cotangents = jax.tree.map(lambda g: g.reshape(num_chunks, -1, *g.shape[1:]), embedding_grads)

  def pull_back(total: PyTree, xs: tuple[Batch, jax.Array, dict[str, jax.Array]]) -> tuple[PyTree, None]:
    chunk, index, cotangent = xs
    _, vjp = jax.vjp(lambda p: embed(p, chunk, index), params)
    (grads,) = vjp(cotangent)
    return jax.tree.map(jnp.add, total, grads), None

  grads, _ = lax.scan(pull_back, direct, (chunks, indices, cotangents))
  return metrics, grads
