"""The dual encoder: one tower per modality -> linear projection -> L2-normalised joint embedding.

Towers come from the encoder registry, configured exactly like the classifier's modalities, so a
retrieval config reuses the encoders of a classification config unchanged:

    DualEncoder(modalities={"image": {"encoder": "cnn"}, "text": {"encoder": "lstm", "vocab_size": 62}},
                embed_dim=64, log_scale_init=math.log(1 / 0.07))

The model also owns the contrastive loss's learned temperature `log_scale` (and `bias`, for losses that
have one), so they are ordinary parameters: optimised, checkpointed and restored with the towers.

`dtype` is the computation dtype of the towers and projections; parameters (`log_scale` and `bias`
included) stay float32, and the embeddings are normalised and returned in float32, so the contrastive
loss and the retrieval metrics reduce in float32.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from mmlearn.models.config import build_encoder, freeze_config
from mmlearn.models.encoders import computation_dtype


def l2_normalise(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """x / max(|x|, eps) along the last axis (as torch's F.normalize): an all-zero vector stays zero."""
  return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class DualEncoder(nn.Module):
  """Embeds every configured modality present in the batch: `{modality: [B, embed_dim]}`, unit norm.

  A batch holding only some modalities (a text query) embeds only those; `init` needs all of them.

  Attributes:
    modalities: modality name -> `{"encoder": <registered name>, **encoder kwargs}`.
    embed_dim: width of the joint embedding space.
    log_scale_init: initial log of the similarity scale (the inverse temperature).
    bias_init: initial logit bias; None for losses without one (no `bias` parameter is created).
    project: False uses each tower's features as its embedding (`embed_dim` unused), for pretrained
      towers that carry their own projection (CLIP's `image_embeds`), so zero-shot scores are theirs.
    dtype: computation dtype of the towers and projections; parameters and embeddings are float32.
  """

  modalities: Mapping[str, Mapping[str, Any]]
  embed_dim: int
  log_scale_init: float
  bias_init: float | None = None
  project: bool = True
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "modalities", freeze_config(self.modalities))  # Hashable, like Classifier.
    super().__post_init__()

  @nn.compact
  def __call__(self, batch: Mapping[str, jnp.ndarray], *, train: bool = False) -> dict[str, jnp.ndarray]:
    dtype = computation_dtype(self.dtype, "DualEncoder")
    self.param("log_scale", nn.initializers.constant(self.log_scale_init), (), jnp.float32)
    if self.bias_init is not None:
      self.param("bias", nn.initializers.constant(self.bias_init), (), jnp.float32)
    embeddings = {}
    for modality in sorted(self.modalities):
      if modality not in batch:
        continue
      encoder = build_encoder(modality, self.modalities[modality], dtype=dtype, name=f"{modality}_encoder")
      features = encoder(batch[modality], batch.get(f"{modality}_mask"), train=train)
      if self.project:
        projection = nn.Dense(
          self.embed_dim, dtype=dtype, param_dtype=jnp.float32, name=f"{modality}_projection"
        )
        features = projection(features)
      embeddings[modality] = l2_normalise(features.astype(jnp.float32))
    return embeddings
