"""Contrastive losses of paired, L2-normalised embeddings over the GLOBAL batch, by name.

These are per-device code. Each device all-gathers the other devices' embeddings (`lax.all_gather`,
tiled, so the gathered batch is in global order) and scores only its own rows: its local queries against
every item of the global batch. The mean of the per-device losses is then the loss of the whole global
batch. The gradient of that mean is what the trainer gets from `pmean(grads)`: autodiff transposes
`all_gather` into a `psum_scatter`, so each device's gradient already includes what the other devices'
rows contribute through its embeddings (under `pmap` and under `shard_map(check_vma=False)`, as
`mmlearn.parallel` maps steps; tested on 4 devices against a single-device run). With
`axis_name=None` the functions score the local batch alone (for tests and single-host tools).

  clip:   symmetric InfoNCE (Radford et al. 2021); logit scale exp(t), t initialised at log(1 / 0.07),
          the scale clamped at 100.
  siglip: pairwise sigmoid loss (Zhai et al. 2023), summed over all pairs and divided by the batch size;
          logits exp(t') * similarity + b, t' initialised at log 10, b at -10.
"""

import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mmlearn.registry import Registry

LOSSES = Registry("contrastive loss")


def gather(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """(the global batch of `x` in device order, the global index of this device's first row)."""
  if axis_name is None:
    return x, jnp.int32(0)
  return lax.all_gather(x, axis_name, tiled=True), lax.axis_index(axis_name) * x.shape[0]


@LOSSES.register("clip")
class ClipLoss:
  """Softmax cross-entropy of each local item against every item of the other modality, both ways."""

  log_scale_init = math.log(1 / 0.07)
  bias_init = None
  max_scale = 100.0

  def scale(self, log_scale: jax.Array) -> jax.Array:
    return jnp.minimum(jnp.exp(log_scale), self.max_scale)

  def __call__(
    self,
    a: jax.Array,
    b: jax.Array,
    *,
    log_scale: jax.Array,
    bias: jax.Array | None = None,
    axis_name: str | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """a, b: [local batch, D] embeddings of the two modalities, row i of each a pair."""
    del bias
    all_a, offset = gather(a, axis_name)
    all_b, _ = gather(b, axis_name)
    scale = self.scale(log_scale)
    labels = offset + jnp.arange(a.shape[0])
    logits_ab = scale * a @ all_b.T  # [local, global]: local a-queries against every b.
    logits_ba = scale * b @ all_a.T
    loss_ab = optax.softmax_cross_entropy_with_integer_labels(logits_ab, labels).mean()
    loss_ba = optax.softmax_cross_entropy_with_integer_labels(logits_ba, labels).mean()
    loss = (loss_ab + loss_ba) / 2
    accuracy = ((logits_ab.argmax(-1) == labels).mean() + (logits_ba.argmax(-1) == labels).mean()) / 2
    return loss, {"loss": loss, "batch_accuracy": accuracy, "logit_scale": scale}


@LOSSES.register("siglip")
class SigLipLoss:
  """Independent binary classification of every (a, b) pair: positive on the diagonal, negative off it."""

  log_scale_init = math.log(10.0)
  bias_init = -10.0

  def scale(self, log_scale: jax.Array) -> jax.Array:
    return jnp.exp(log_scale)

  def __call__(
    self,
    a: jax.Array,
    b: jax.Array,
    *,
    log_scale: jax.Array,
    bias: jax.Array | None = None,
    axis_name: str | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """a, b: [local batch, D] embeddings of the two modalities, row i of each a pair."""
    if bias is None:
      raise ValueError("the siglip loss needs a learned bias")
    all_b, offset = gather(b, axis_name)
    scale = self.scale(log_scale)
    logits = scale * a @ all_b.T + bias  # [local, global]: every pair appears on exactly one device.
    positive = (offset + jnp.arange(a.shape[0]))[:, None] == jnp.arange(all_b.shape[0])[None, :]
    signs = jnp.where(positive, 1.0, -1.0)
    loss = -jax.nn.log_sigmoid(signs * logits).sum() / a.shape[0]
    accuracy = (logits.argmax(-1) == offset + jnp.arange(a.shape[0])).mean()
    return loss, {"loss": loss, "batch_accuracy": accuracy, "logit_scale": scale, "logit_bias": bias}
