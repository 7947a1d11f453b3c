"""Fusion modules: combine one feature vector per modality into a single joint representation.

Interface every fusion follows (the classifier relies on nothing else):

    fused = FusionModule(**fusion_kwargs)(features, *, train=False)   # -> [B, D]

  - `features`: a sequence with one [B, D_i] array per modality, always in the same (sorted) modality
    order, so a fusion may keep per-modality parameters by position. Widths D_i may differ. Any number
    of modalities >= 1 is accepted; with one modality a fusion still applies its own transform.
  - `train`: whether the model is training, for fusions with dropout; ignored by the others.
  - Returns [B, D], where D depends on the fusion and its arguments (not on the batch).

Late fusions decide per modality and combine decisions, so their output is already the logits. Such a
fusion sets the class attribute `outputs_logits = True` and has fields `num_classes` and `head_hidden`,
which the classifier fills from its own and then adds no head of its own (see `outputs_logits` below).

Every fusion also takes `present`: None (every modality present) or a [B, M] bool mask of which
modalities each example really has (`mmlearn.data.missing`). What an absent modality means depends on
the fusion's shape:
  - fusions that pool over modalities (`sum`, `late`, `gated`, `attention`) pool over the present ones
    only, so an absent modality's features, whatever the imputation put there, never enter;
  - fusions with one fixed slot per modality (`concat`, `tensor`, `low_rank_tensor`, `multiplicative`)
    cannot leave a slot out and use the features as given: the classifier's imputation strategy (zero or
    mean input, or a learned embedding) decides what fills an absent modality's slot.
With every modality present the mask changes nothing (tested against `present=None`).

Every fusion takes `dtype`, the computation dtype (the classifier passes its own): it computes and
returns in it, with float32 parameters. Fusions without parameters just cast the features.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import computation_dtype
from mmlearn.registry import Registry

FUSIONS = Registry("fusion")


def check_features(features: Sequence[jnp.ndarray]) -> None:
  """Rejects an empty modality list or mismatched batch sizes with a readable error."""
  if not features:
    raise ValueError("fusion needs at least one modality's features, got none")
  batch_sizes = {f.shape[0] for f in features}
  if any(f.ndim != 2 for f in features) or len(batch_sizes) != 1:
    raise ValueError(f"fusion expects [B, D_i] features with one B, got shapes {[f.shape for f in features]}")


def presence(present: jnp.ndarray | None, features: Sequence[jnp.ndarray], dtype=jnp.float32) -> jnp.ndarray:
  """The mask as float [B, M] in `dtype` (all ones when None), to weight per-modality terms."""
  if present is None:
    return jnp.ones((features[0].shape[0], len(features)), dtype)
  if present.shape != (features[0].shape[0], len(features)):
    raise ValueError(
      f"presence mask of shape {present.shape} for {len(features)} modalities of {features[0].shape[0]}"
    )
  return present.astype(dtype)


def outputs_logits(fusion_class: type[nn.Module]) -> bool:
  """Whether a fusion's output is the final logits, so the classifier must not add a head after it."""
  return getattr(fusion_class, "outputs_logits", False)


def cast_features(module: nn.Module, features: Sequence[jnp.ndarray]) -> tuple[jnp.dtype, list[jnp.ndarray]]:
  """(the module's computation dtype, the features in it), after `check_features`."""
  check_features(features)
  dtype = computation_dtype(module.dtype, f"fusion {type(module).__name__}")
  return dtype, [jnp.asarray(f).astype(dtype) for f in features]


def dense(width: int, dtype: DTypeLike, name: str) -> nn.Dense:
  """A dense layer computing in `dtype` with float32 parameters."""
  return nn.Dense(width, dtype=dtype, param_dtype=jnp.float32, name=name)


def append_one(x: jnp.ndarray) -> jnp.ndarray:
  """[B, D] -> [B, D + 1] with a constant 1 last, so products of such vectors keep every lower-order term."""
  return jnp.concatenate([x, jnp.ones_like(x[:, :1])], axis=-1)


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
  """Early fusion by concatenation: [B, sum(D_i)]. No parameters; the head learns the interactions."""

  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del present, train  # One slot per modality: an absent one is filled by the imputation.
    _, features = cast_features(self, features)
    return jnp.concatenate(features, axis=-1)


@FUSIONS.register("sum")
class SumFusion(nn.Module):
  """Projects each modality to a shared width with its own dense layer, then sums: [B, dim].

  Unlike concatenation, the output width does not grow with the number of modalities, and every
  modality lands in one shared space, which later fusions (gating, attention) build on.

  Attributes:
    dim: width of the shared space.
  """

  dim: int = 64
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del train
    dtype, features = cast_features(self, features)
    weights = presence(present, features, dtype)
    projected = [dense(self.dim, dtype, f"project{i}")(f) for i, f in enumerate(features)]
    return sum((weights[:, i : i + 1] * p for i, p in enumerate(projected)), jnp.zeros((), dtype))


class MLP(nn.Module):
  """Dense + relu per hidden width, then a linear output layer: [B, D] -> [B, out]."""

  hidden: Sequence[int]
  out: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i, width in enumerate(self.hidden):
      x = nn.relu(dense(width, self.dtype, f"hidden{i}")(x))
    return dense(self.out, self.dtype, "logits")(x)


@FUSIONS.register("late")
class LateFusion(nn.Module):
  """Late fusion: one MLP head per modality ending in logits; the output is their mean, [B, num_classes].

  Each modality is classified on its own and only the decisions are combined, the baseline that tells
  whether a model gains anything from cross-modal interactions. Since the output is the logits, the
  classifier supplies `num_classes` and `head_hidden` and adds no head of its own.

  Attributes:
    num_classes: number of logits of every per-modality head.
    head_hidden: widths of each head's hidden layers (relu); () gives linear heads.
  """

  outputs_logits = True

  num_classes: int
  head_hidden: Sequence[int] = ()
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del train
    dtype, features = cast_features(self, features)
    weights = presence(present, features, dtype)
    logits = [
      MLP(tuple(self.head_hidden), self.num_classes, dtype, name=f"head{i}")(f)
      for i, f in enumerate(features)
    ]
    return jnp.einsum("bm,mbc->bc", weights / weights.sum(-1, keepdims=True), jnp.stack(logits))


@FUSIONS.register("gated")
class GatedFusion(nn.Module):
  """Gated multimodal unit (Arevalo et al. 2017) for M modalities: sum_i z_i * tanh(W_i x_i), [B, dim].

  Each gate z_i = sigmoid(G_i concat(x)) is a per-feature weight computed from all modalities, so the
  unit learns, per example, how much each modality contributes to each output feature. The paper's
  two-modality unit ties the gates (z and 1 - z); here every modality gets its own independent sigmoid
  gate, which generalises to any M without forcing a convex combination (the unit may use both
  modalities, or neither). With one modality this is a learned self-gating of tanh(W x).

  Attributes:
    dim: width of the hidden representations and the output.
  """

  dim: int = 64
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del train
    dtype, features = cast_features(self, features)
    weights = presence(present, features, dtype)
    # The gates read every present modality; an absent one enters them as zeros.
    everything = jnp.concatenate([weights[:, i : i + 1] * f for i, f in enumerate(features)], axis=-1)
    fused = jnp.zeros((), dtype)
    for i, f in enumerate(features):
      hidden = jnp.tanh(dense(self.dim, dtype, f"project{i}")(f))
      gate = nn.sigmoid(dense(self.dim, dtype, f"gate{i}")(everything))
      fused = fused + weights[:, i : i + 1] * gate * hidden
    return fused


@FUSIONS.register("attention")
class AttentionFusion(nn.Module):
  """Self-attention over one token per modality, mean-pooled: [B, dim].

  Each modality is projected to a `dim`-wide token (its own dense layer) plus a learned modality
  embedding, one multi-head self-attention layer with a residual lets every token read the others, and
  the tokens are averaged. Tokens make the fusion a natural place for a later presence mask.

  Attributes:
    dim: token width and output width; must be divisible by `num_heads`.
    num_heads: attention heads.
  """

  dim: int = 64
  num_heads: int = 4
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del train
    dtype, features = cast_features(self, features)
    weights = presence(present, features, dtype)
    if self.dim % self.num_heads:
      raise ConfigError(f"attention fusion: dim={self.dim} is not divisible by num_heads={self.num_heads}")
    tokens = jnp.stack([dense(self.dim, dtype, f"project{i}")(f) for i, f in enumerate(features)], axis=1)
    modality_embedding = self.param(
      "modality_embedding", nn.initializers.normal(0.02), (len(features), self.dim), jnp.float32
    )
    tokens = tokens + modality_embedding.astype(dtype)
    mask = nn.make_attention_mask(weights, weights) > 0  # Absent tokens are neither read nor pooled.
    attention = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=dtype,
      param_dtype=jnp.float32,
      force_fp32_for_softmax=True,
      name="attention",
    )
    tokens = tokens + attention(tokens, mask=mask)
    return jnp.einsum("bm,bmd->bd", weights / weights.sum(-1, keepdims=True), tokens)


@FUSIONS.register("tensor")
class TensorFusion(nn.Module):
  """Tensor Fusion Network (Zadeh et al. 2017): vec([x_1; 1] (x) [x_2; 1] (x) ...), [B, prod(D_i + 1)].

  The appended 1s keep every unimodal, bimodal, ... term of the outer product, so a linear head on the
  result models all multiplicative interactions. No parameters. The width is the product of the
  (D_i + 1): it explodes with width and modality count (three 64-wide modalities give 274,625 features),
  so use it on small embeddings only, or prefer `low_rank_tensor`.
  """

  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del present, train  # One slot per modality: an absent one is filled by the imputation.
    _, features = cast_features(self, features)
    batch_size = features[0].shape[0]
    return functools.reduce(
      lambda fused, x: jnp.einsum("bi,bj->bij", fused, append_one(x)).reshape(batch_size, -1),
      features[1:],
      append_one(features[0]),
    )


@FUSIONS.register("low_rank_tensor")
class LowRankTensorFusion(nn.Module):
  """Low-rank Multimodal Fusion (Liu et al. 2018): the tensor fusion's linear map at rank r, [B, dim].

  For rank k, each modality is mapped by its own factor, [x_i; 1] @ W_i^(k), and the modalities are
  multiplied elementwise; the r products are combined by learned `fusion_weights` plus `fusion_bias`
  (as in MultiBench). This equals a dense layer on the `tensor` fusion's output whose weight tensor has
  rank r, without ever building the prod(D_i + 1)-wide product.

  Attributes:
    dim: output width.
    rank: number of rank-one terms.
  """

  dim: int = 64
  rank: int = 4
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del present, train  # One slot per modality: an absent one is filled by the imputation.
    dtype, features = cast_features(self, features)
    factor_init = nn.initializers.glorot_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    product = 1.0
    for i, f in enumerate(features):
      factor = self.param(f"factor{i}", factor_init, (self.rank, f.shape[-1] + 1, self.dim), jnp.float32)
      product = product * jnp.einsum("bi,kid->kbd", append_one(f), factor.astype(dtype))  # [rank, B, dim]
    fusion_weights = self.param(
      "fusion_weights", nn.initializers.glorot_normal(), (1, self.rank), jnp.float32
    )
    fusion_bias = self.param("fusion_bias", nn.initializers.zeros, (1, self.dim), jnp.float32)
    return jnp.einsum("k,kbd->bd", fusion_weights[0].astype(dtype), product) + fusion_bias.astype(dtype)


@FUSIONS.register("multiplicative")
class MultiplicativeFusion(nn.Module):
  """Multiplicative interactions (Jayakumar et al. 2020), matrix form: z^T W x + z^T U + V x + b, [B, dim].

  x is the first modality and z the concatenation of the others: z picks, per example, the weight
  matrix (z . W + V) that is applied to x, so one modality gates the transform of the other. In code:
  x @ (z . W) + z @ U + x @ V + b, with W = `interaction` [D_z, D_x, dim], U = `others_kernel`
  [D_z, dim], V = `first_kernel` [D_x, dim] and b = `bias` [dim]. With more than two modalities the
  interactions among the others are linear only (they enter through z). With one modality there is no z,
  and the fusion is the dense layer x @ V + b.

  Attributes:
    dim: output width.
  """

  dim: int = 64
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, features: Sequence[jnp.ndarray], *, present: jnp.ndarray | None = None, train: bool = False
  ) -> jnp.ndarray:
    del present, train  # One slot per modality: an absent one is filled by the imputation.
    dtype, features = cast_features(self, features)
    x = features[0]
    first_kernel = self.param(
      "first_kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.dim), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32)
    fused = x @ first_kernel.astype(dtype) + bias.astype(dtype)
    if len(features) == 1:
      return fused
    z = jnp.concatenate(list(features[1:]), axis=-1)
    interaction = self.param(
      "interaction",
      nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
      (z.shape[-1], x.shape[-1], self.dim),
      jnp.float32,
    )
    others_kernel = self.param(
      "others_kernel", nn.initializers.lecun_normal(), (z.shape[-1], self.dim), jnp.float32
    )
    return (
      fused + jnp.einsum("bx,bz,zxd->bd", x, z, interaction.astype(dtype)) + z @ others_kernel.astype(dtype)
    )
