"""Fusion modules: combine one feature vector per modality into a single joint representation.

Interface every fusion follows (the classifier relies on nothing else):

    fused = FusionModule(**fusion_kwargs)(features, *, train=False)   # -> [B, D]

  - `features`: a sequence with one [B, D_i] array per modality, always in the same (sorted) modality
    order, so a fusion may keep per-modality parameters by position. Widths D_i may differ. Any number
    of modalities >= 1 is accepted; with one modality a fusion still applies its own transform.
  - `train`: whether the model is training, for fusions with dropout; ignored by the others.
  - Returns [B, D], where D depends on the fusion and its arguments (not on the batch).

Optional inputs added later (e.g. a per-example modality-presence mask `present: [B, M] bool`) become
keyword-only arguments with a `None` default, added to every fusion at once, so existing callers and
configs keep working unchanged.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmlearn.registry import Registry

FUSIONS = Registry("fusion")


def check_features(features: Sequence[jnp.ndarray]) -> None:
  """Rejects an empty modality list or mismatched batch sizes with a readable error."""
  if not features:
    raise ValueError("fusion needs at least one modality's features, got none")
  batch_sizes = {f.shape[0] for f in features}
  if any(f.ndim != 2 for f in features) or len(batch_sizes) != 1:
    raise ValueError(f"fusion expects [B, D_i] features with one B, got shapes {[f.shape for f in features]}")


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
  """Early fusion by concatenation: [B, sum(D_i)]. No parameters; the head learns the interactions."""

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool = False) -> jnp.ndarray:
    del train
    check_features(features)
    return jnp.concatenate(list(features), axis=-1)


@FUSIONS.register("sum")
class SumFusion(nn.Module):
  """Projects each modality to a shared width with its own dense layer, then sums: [B, dim].

  Unlike concatenation, the output width does not grow with the number of modalities, and every
  modality lands in one shared space, which later fusions (gating, attention) build on.

  Attributes:
    dim: width of the shared space.
  """

  dim: int = 64

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], *, train: bool = False) -> jnp.ndarray:
    del train
    check_features(features)
    projected = [nn.Dense(self.dim, name=f"project{i}")(f) for i, f in enumerate(features)]
    return sum(projected[1:], projected[0])
