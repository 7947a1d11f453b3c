"""Transformer encoders: a ViT-style patch Transformer (`vit`) and a Transformer text encoder (`transformer`).

Both follow the encoder contract of `mmlearn.models.encoders` (`__call__(x, mask=None, *, train=False)
-> [B, D]`) and are registered in `ENCODERS`, so classification, retrieval and fusion configs use them like
the CNN and LSTM:

    {"encoder": "vit", "patch": 4, "width": 64, "depth": 2, "heads": 4, "mlp_dim": 128}
    {"encoder": "transformer", "width": 64, "depth": 2, "heads": 4, "mlp_dim": 128}  # vocab_size: dataset's

Blocks are pre-LN (x + Attention(LN(x)), then x + MLP(LN(x))) with a final LayerNorm, learned position
embeddings and GELU MLPs.

Pooling (`pool`): "mean" (default) averages the final tokens -- every patch for `vit`, only the real
tokens for `transformer` -- and "cls" prepends a learned CLS token and reads its final state. Mean pooling
is the default, chosen on validation (docs/retrieval.md, "Transformer towers").

Padding (`transformer`): `mask` (bool [B, T], True = real token) masks the attention keys, so no real
token -- nor the CLS token -- ever attends to padding, and the mean pool counts only real tokens; the
ids under the padding are replaced by 0 before the embedding lookup. The output therefore does not depend
on what sits under the padding (the padded positions' own states do, but nothing reads them). A sequence
with no real tokens encodes to zeros with mean pooling (as `lstm`), and to its CLS state with "cls".

`dtype` is the computation dtype (a jnp dtype or a name, "bfloat16"), as every module's in
`mmlearn.models`: the embeddings, LayerNorms, attention, MLPs and the `dense` head compute in it, while
parameters stay float32 (`param_dtype`), LayerNorm statistics and the attention softmax are computed in
float32, and the pooled features are returned as float32 like the other encoders' (the pool itself is
float32).

Dropout: `dropout` (after the embeddings, the attention output and inside/after the MLP) and
`attention_dropout` (on the attention weights) act only when `train=True` and the rate is > 0, and then
need a 'dropout' RNG stream (`model.apply(..., rngs={"dropout": key})`, as the trainer's step passes).
Both default to 0.0; with rate 0 (or `train=False`) the modules are deterministic and need no RNG.
Training with a rate > 0 without a 'dropout' stream raises a `ConfigError` naming the key.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS, computation_dtype

POOLS = ("mean", "cls")
_POS_INIT = nn.initializers.normal(stddev=0.02)


def check_transformer_config(module: Any, what: str) -> None:
  """Raises a `ConfigError` naming the key for widths, heads, depths, rates or pools that cannot run."""
  for key in ("width", "heads", "mlp_dim"):
    if getattr(module, key) < 1:
      raise ConfigError(f"{what}: {key} must be >= 1, got {getattr(module, key)}")
  if module.depth < 0:
    raise ConfigError(f"{what}: depth must be >= 0, got {module.depth}")
  if module.width % module.heads:
    raise ConfigError(f"{what}: width={module.width} is not divisible by heads={module.heads}")
  for key in ("dropout", "attention_dropout"):
    if not 0.0 <= getattr(module, key) < 1.0:
      raise ConfigError(f"{what}: {key} must be in [0, 1), got {getattr(module, key)}")
  if module.pool not in POOLS:
    raise ConfigError(f"{what}: pool must be one of {', '.join(POOLS)}, got {module.pool!r}")
  if module.dense is not None and module.dense < 1:
    raise ConfigError(f"{what}: dense must be >= 1 or None, got {module.dense}")
  computation_dtype(module.dtype, what)


def check_dropout_rng(module: nn.Module, train: bool, what: str) -> None:
  """A `ConfigError` instead of Flax's missing-RNG error when dropout would run without a 'dropout' stream."""
  if train and (module.dropout > 0 or module.attention_dropout > 0) and not module.has_rng("dropout"):
    raise ConfigError(
      f"{what}: dropout={module.dropout}, attention_dropout={module.attention_dropout} need a 'dropout' "
      "RNG stream when training, and the caller passes none; set both to 0.0"
    )


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(back to the input width) -> dropout."""

  mlp_dim: int
  dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(x)
    x = nn.gelu(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class EncoderBlock(nn.Module):
  """Pre-LN Transformer block: x + Dropout(Attention(LN(x))), then x + MLP(LN(x)).

  Attributes:
    heads: attention heads (must divide the input width).
    mlp_dim: hidden width of the MLP.
    dropout: dropout rate on the attention output and in the MLP.
    attention_dropout: dropout rate on the attention weights.
    dtype: computation dtype (parameters are float32).
  """

  heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None, *, deterministic: bool
  ) -> jnp.ndarray:
    """x [B, T, W]; key_mask bool [B, T] (True = a key that may be attended to), None = all."""
    attention_mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, heads, queries, keys]
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_attention")(x)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.heads,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      dropout_rate=self.attention_dropout,
      force_fp32_for_softmax=True,
      name="attention",
    )(y, y, mask=attention_mask, deterministic=deterministic)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_mlp")(x)
    return x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, deterministic=deterministic)


class TransformerStack(nn.Module):
  """`depth` `EncoderBlock`s, then a final LayerNorm (pre-LN leaves the residual stream unnormalised)."""

  depth: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None, *, deterministic: bool
  ) -> jnp.ndarray:
    for i in range(self.depth):
      x = EncoderBlock(
        self.heads, self.mlp_dim, self.dropout, self.attention_dropout, self.dtype, name=f"block{i}"
      )(x, key_mask, deterministic=deterministic)
    return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_final")(x)


def prepend_cls(module: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
  """[B, T, W] -> [B, 1 + T, W] with the learned `cls` token (float32 parameter) first."""
  cls = module.param("cls", nn.initializers.zeros_init(), (1, 1, x.shape[-1]), jnp.float32)
  cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
  return jnp.concatenate([cls, x], axis=1)


def features_head(module: nn.Module, pooled: jnp.ndarray, dtype: jnp.dtype) -> jnp.ndarray:
  """The float32 pooled features, through `dense` + relu (in `dtype`) when the module sets `dense`."""
  if module.dense is None:
    return pooled
  dense = nn.Dense(module.dense, dtype=dtype, param_dtype=jnp.float32, name="dense")
  return nn.relu(dense(pooled)).astype(jnp.float32)


@ENCODERS.register("vit")
class VisionTransformer(nn.Module):
  """ViT-style encoder for images and spectrograms [B, H, W, C]: non-overlapping patches -> Transformer.

  Each `patch` x `patch` patch is flattened and linearly embedded to `width` (a matrix product, not a
  convolution: the same function as a stride-`patch` conv, fast to differentiate on CPU), a learned
  position embedding (one per patch, its count fixed by the input size at init) is added, and `depth`
  pre-LN blocks follow. Output: [B, width] (mean over patches, or the CLS token), or [B, dense] with `dense`.
  `mask` is ignored (images have no padding).

  Attributes:
    patch: patch side in pixels; must divide the input's height and width.
    width: token width.
    depth: number of Transformer blocks.
    heads: attention heads (must divide `width`).
    mlp_dim: MLP hidden width.
    dropout: dropout rate (embeddings, attention output, MLP); > 0 needs a 'dropout' RNG when training.
    attention_dropout: dropout rate on the attention weights; likewise.
    pool: "mean" (over patches) or "cls" (a learned CLS token).
    dense: if set, a dense layer + relu maps the pooled features to this many (as the CNN's `dense`).
    dtype: computation dtype, e.g. "bfloat16"; parameters and the returned features are float32.
  """

  patch: int = 4
  width: int = 64
  depth: int = 2
  heads: int = 4
  mlp_dim: int = 128
  dropout: float = 0.0
  attention_dropout: float = 0.0
  pool: str = "mean"
  dense: int | None = None
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    check_transformer_config(self, "encoder 'vit'")
    if self.patch < 1:
      raise ConfigError(f"encoder 'vit': patch must be >= 1, got {self.patch}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes float arrays [B, H, W, C] into features [B, width] (or [B, dense]); `mask` is unused."""
    del mask
    check_dropout_rng(self, train, "encoder 'vit'")
    dtype = computation_dtype(self.dtype, "encoder 'vit'")
    if x.ndim != 4:
      raise ConfigError(f"encoder 'vit' reads [B, H, W, C] arrays, got shape {x.shape}")
    b, h, w, c = x.shape
    p = self.patch
    if h % p or w % p:
      raise ConfigError(f"encoder 'vit': patch={p} does not divide the {h}x{w} input; choose a divisor")
    # [B, H/p, p, W/p, p, C] -> [B, (H/p)(W/p), p*p*C]: patches in row-major order, pixels (i, j, c) inside.
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
    tokens = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="patch_embed")(
      patches.astype(dtype)
    )
    position = self.param("pos_embed", _POS_INIT, (1, tokens.shape[1], self.width), jnp.float32)
    tokens = tokens + position.astype(dtype)
    if self.pool == "cls":
      tokens = prepend_cls(self, tokens)
    deterministic = not train
    tokens = nn.Dropout(self.dropout)(tokens, deterministic=deterministic)
    tokens = TransformerStack(
      self.depth, self.heads, self.mlp_dim, self.dropout, self.attention_dropout, dtype, name="encoder"
    )(tokens, deterministic=deterministic)
    tokens = tokens.astype(jnp.float32)
    pooled = tokens[:, 0] if self.pool == "cls" else tokens.mean(axis=1)
    return features_head(self, pooled, dtype)


@ENCODERS.register("transformer")
class TextTransformer(nn.Module):
  """Transformer text encoder: token + learned position embeddings -> pre-LN blocks with a padding mask.

  Sequences are right- or otherwise padded; `mask` (bool [B, T], None = no padding) marks the real
  tokens, which need not be a prefix (position embeddings follow the array position). Padding is masked
  out of every attention and of the mean pool (see the module docstring), so the ids under it never
  change the output. Output: [B, width], or [B, dense] with `dense`.

  Attributes:
    vocab_size: number of token ids (ids must lie in [0, vocab_size)); the dataset's when unset.
    width: embedding and token width.
    depth: number of Transformer blocks.
    heads: attention heads (must divide `width`).
    mlp_dim: MLP hidden width.
    max_len: longest sequence (rows of the position embedding); longer inputs raise a `ConfigError`.
    dropout: dropout rate (embeddings, attention output, MLP); > 0 needs a 'dropout' RNG when training.
    attention_dropout: dropout rate on the attention weights; likewise.
    pool: "mean" (over the real tokens) or "cls" (a learned CLS token, which attends to real tokens only).
    dense: if set, a dense layer + relu maps the pooled features to this many (as the LSTM's `dense`).
    dtype: computation dtype, e.g. "bfloat16"; parameters and the returned features are float32.
  """

  vocab_size: int
  width: int = 64
  depth: int = 2
  heads: int = 4
  mlp_dim: int = 128
  max_len: int = 64
  dropout: float = 0.0
  attention_dropout: float = 0.0
  pool: str = "mean"
  dense: int | None = None
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    check_transformer_config(self, "encoder 'transformer'")
    for key in ("vocab_size", "max_len"):
      if getattr(self, key) < 1:
        raise ConfigError(f"encoder 'transformer': {key} must be >= 1, got {getattr(self, key)}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes int tokens [B, T] (with bool `mask` [B, T], None = no padding) into features [B, D]."""
    check_dropout_rng(self, train, "encoder 'transformer'")
    dtype = computation_dtype(self.dtype, "encoder 'transformer'")
    if x.ndim != 2:
      raise ConfigError(f"encoder 'transformer' reads [B, T] token ids, got shape {x.shape}")
    length = x.shape[1]
    if length > self.max_len:
      raise ConfigError(
        f"encoder 'transformer': {length} tokens exceed max_len={self.max_len}; raise max_len"
      )
    mask = jnp.ones(x.shape, bool) if mask is None else mask.astype(bool)
    # Pad ids become 0 so any id under the padding (even out of range) is a valid, unused lookup.
    tokens = jnp.where(mask, x, 0)
    embedded = nn.Embed(self.vocab_size, self.width, dtype=dtype, param_dtype=jnp.float32, name="embed")(
      tokens
    )
    position = self.param("pos_embed", _POS_INIT, (1, self.max_len, self.width), jnp.float32)
    embedded = embedded + position[:, :length].astype(dtype)
    key_mask = mask
    if self.pool == "cls":
      embedded = prepend_cls(self, embedded)
      key_mask = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), mask], axis=1)
    deterministic = not train
    embedded = nn.Dropout(self.dropout)(embedded, deterministic=deterministic)
    states = TransformerStack(
      self.depth, self.heads, self.mlp_dim, self.dropout, self.attention_dropout, dtype, name="encoder"
    )(embedded, key_mask, deterministic=deterministic)
    states = states.astype(jnp.float32)
    if self.pool == "cls":
      pooled = states[:, 0]
    else:
      weights = mask.astype(jnp.float32)[..., None]
      count = weights.sum(axis=1)
      # An empty sequence (count 0) pools to zeros; `where` keeps NaN-free gradients through the division.
      pooled = jnp.where(count > 0, (states * weights).sum(axis=1) / jnp.maximum(count, 1.0), 0.0)
    return features_head(self, pooled, dtype)
