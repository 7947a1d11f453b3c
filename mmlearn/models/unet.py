"""A small conditional U-Net: the velocity field of the flow task (`mmlearn.tasks.flow`).

`FlowNet` embeds the condition with any registered encoder (`build_encoder`: a caption LSTM, an audio
LeNet, ...) and a dense layer, adds it to a sinusoidal embedding of the time t, and the sum modulates
every residual block of the U-Net (FiLM: GroupNorm, then a per-channel scale and shift). A learned
null embedding stands in for the condition where `drop` is set; training on both (condition dropout)
gives one network the conditional and the unconditional velocity that classifier-free guidance mixes.

The condition is embedded once (`encode`) and the U-Net (`velocity`) runs at every ODE step, so a
sampler does not re-run the condition encoder per step. The U-Net reads any [B, H, W, C] input with H
and W divisible by 2 ** (levels - 1) and returns the same shape (28x28 digits: 28 -> 14 -> 7).

`dtype` is the computation dtype of every layer; parameters and the returned velocity are float32.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.config import build_encoder, freeze_config
from mmlearn.models.encoders import computation_dtype


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features [B, dim] of times t [B] in [0, 1] (scaled by 1000, as diffusion models do)."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * jnp.asarray(t, jnp.float32)[:, None] * frequencies[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def group_norm(features: int, groups: int, dtype: DTypeLike, name: str) -> nn.GroupNorm:
  """GroupNorm with the largest group count <= `groups` that divides `features` (statistics in float32)."""
  count = max(g for g in range(1, min(groups, features) + 1) if features % g == 0)
  return nn.GroupNorm(num_groups=count, dtype=dtype, param_dtype=jnp.float32, name=name)


class ResBlock(nn.Module):
  """GroupNorm -> swish -> conv -> GroupNorm -> FiLM(embedding) -> swish -> conv, plus the skip."""

  features: int
  groups: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
    conv = lambda f, k, name, **kw: nn.Conv(  # noqa: E731
      f, (k, k), dtype=self.dtype, param_dtype=jnp.float32, name=name, **kw
    )
    h = conv(self.features, 3, "conv0")(
      nn.swish(group_norm(x.shape[-1], self.groups, self.dtype, "norm0")(x))
    )
    film = nn.Dense(2 * self.features, dtype=self.dtype, param_dtype=jnp.float32, name="film")
    scale, shift = jnp.split(film(nn.swish(embedding)), 2, axis=-1)
    h = group_norm(self.features, self.groups, self.dtype, "norm1")(h)
    h = nn.swish(h * (1 + scale[:, None, None]) + shift[:, None, None])
    # Zero-initialised: each block starts as the identity, which keeps deep stacks stable early on.
    h = conv(self.features, 3, "conv1", kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, "skip")(x)
    return x + h


class UNet(nn.Module):
  """v(x, t, c): residual blocks per resolution, strided-conv downsampling, nearest upsampling, skips.

  Attributes:
    widths: channels at each resolution; len(widths) - 1 halvings.
    blocks: residual blocks per resolution on the way down (and as many on the way up).
    groups: GroupNorm groups (fewer where a width is not divisible).
    embed_dim: width of the time embedding, which the condition embedding is added to.
  """

  widths: Sequence[int] = (32, 64)
  blocks: int = 1
  groups: int = 8
  embed_dim: int = 128
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, condition: jax.Array | None = None) -> jax.Array:
    dtype = computation_dtype(self.dtype, "flow U-Net")
    height, width, channels = x.shape[1:]
    factor = 2 ** (len(self.widths) - 1)
    if height % factor or width % factor:
      raise ConfigError(
        f"flow.widths has {len(self.widths)} levels: the {height}x{width} input is not divisible by {factor}"
      )
    dense = lambda f, name: nn.Dense(f, dtype=dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
    embedding = dense(self.embed_dim, "time1")(
      nn.swish(dense(self.embed_dim, "time0")(timestep_embedding(t, self.embed_dim)))
    )
    if condition is not None:
      embedding = embedding + condition.astype(embedding.dtype)
    block = lambda f, name: ResBlock(f, self.groups, dtype, name=name)  # noqa: E731
    conv = lambda f, name, **kw: nn.Conv(f, (3, 3), dtype=dtype, param_dtype=jnp.float32, name=name, **kw)  # noqa: E731
    h = conv(self.widths[0], "stem")(x.astype(dtype))
    skips = []
    for level, features in enumerate(self.widths):
      for b in range(self.blocks):
        h = block(features, f"down{level}_{b}")(h, embedding)
        skips.append(h)
      if level < len(self.widths) - 1:
        h = conv(features, f"pool{level}", strides=2)(h)
    h = block(self.widths[-1], "middle")(h, embedding)
    for level in reversed(range(len(self.widths))):
      for b in range(self.blocks):
        h = block(self.widths[level], f"up{level}_{b}")(jnp.concatenate([h, skips.pop()], -1), embedding)
      if level > 0:
        h = h.repeat(2, axis=1).repeat(2, axis=2)
        h = conv(self.widths[level - 1], f"up{level}")(h)
    h = nn.swish(group_norm(h.shape[-1], self.groups, dtype, "out_norm")(h))
    out = conv(channels, "out")(h)
    return out.astype(jnp.float32)


class ConditionEmbedding(nn.Module):
  """A registered encoder's features -> dense -> [B, embed_dim]; the learned null embedding where `drop`."""

  modality: str
  encoder: Mapping[str, Any]  # {"encoder": <registered name>, **kwargs}
  embed_dim: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], drop: jax.Array, *, train: bool = False) -> jax.Array:
    encoder = build_encoder(self.modality, self.encoder, dtype=self.dtype, name="encoder")
    features = encoder(batch[self.modality], batch.get(f"{self.modality}_mask"), train=train)
    embedded = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32, name="project")(features)
    null = self.param("null", nn.initializers.normal(0.02), (self.embed_dim,), jnp.float32)
    return jnp.where(jnp.asarray(drop, bool)[:, None], null, embedded.astype(jnp.float32))


class FlowNet(nn.Module):
  """The condition embedding and the U-Net as one set of variables (`encode`, then `velocity` per step)."""

  condition: str
  encoder: Mapping[str, Any]
  widths: Sequence[int] = (32, 64)
  blocks: int = 1
  groups: int = 8
  embed_dim: int = 128
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "encoder", freeze_config(self.encoder))  # Hashable for jit and Linen.
    object.__setattr__(self, "widths", tuple(self.widths))
    super().__post_init__()

  def setup(self):
    self.embed = ConditionEmbedding(self.condition, self.encoder, self.embed_dim, self.dtype)
    self.unet = UNet(self.widths, self.blocks, self.groups, self.embed_dim, self.dtype)

  def __call__(self, x, t, batch, drop, *, train: bool = False) -> jax.Array:
    return self.unet(x, t, self.embed(batch, drop, train=train))

  def encode(self, batch: Mapping[str, jax.Array], drop: jax.Array) -> jax.Array:
    return self.embed(batch, drop)

  def velocity(self, x: jax.Array, t: jax.Array, condition: jax.Array) -> jax.Array:
    return self.unet(x, t, condition)
