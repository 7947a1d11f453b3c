"""CLIP's two towers as encoders, equal to `transformers`' `CLIPModel` and read from its checkpoints.

    {"encoder": "clip_vision", "checkpoint": "/path/to/clip-vit-base-patch16"}   # -> image_embeds
    {"encoder": "clip_text", "checkpoint": "/path/to/clip-vit-base-patch16"}     # -> text_embeds

The checkpoint directory's `config.json` (a full `CLIPModel` config, `model_type` "clip") defines the
architecture at any size, so the same code runs a test fixture and ViT-L/14. Each tower returns what
`CLIPModel.get_image_features` / `get_text_features` return: the projected embedding, before the L2
normalisation the contrastive logits apply (a loss or an evaluator normalises).

`load` and `freeze` are not read by the forward pass: the run's setup reads them from the config to
replace the tower's initial parameters with the checkpoint's (`FORMATS[name].to_params`) and to keep them
fixed in training. With `load=False` the tower trains from its random init, the checkpoint serving only as
the architecture's description.

Inputs:
  - `clip_vision`: pixel values [B, H, W, 3], already resized and normalised as the checkpoint's
    `preprocessor_config.json` says (NHWC; `transformers` takes NCHW), with H = W = `image_size`.
  - `clip_text`: token ids [B, T] from the checkpoint's tokenizer (which adds the BOS and EOS tokens) and
    `mask` [B, T] (1 = real, 0 = padding; None = all real). Attention is causal and ignores padding keys.
    The pooled token is the end-of-text one, found as `transformers` finds it: with the legacy
    `eos_token_id == 2` in the config, the position of the largest id (CLIP's EOS is its largest id);
    otherwise the first position holding `eos_token_id`.

`dtype` is the computation dtype; parameters and the returned embeddings are float32. Dropout is not
implemented (the released configs have none); `train` only exists for the encoder contract.

SigLIP (`mmlearn.pretrained.siglip`) is built from the same parts, kept here: the embeddings modules and
their layouts (`PatchEmbeddings`, `patch_layout`, `TokenEmbeddings`, `text_tower_layout`) and the text
trunk (`encode_text`); the Transformer blocks themselves are `mmlearn.pretrained.vit_layers`'.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import vit_layers as vl
from mmlearn.pretrained.formats import FORMATS

MODEL_TYPES = ("clip",)
# `transformers`' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults for keys a config.json omits.
TEXT_DEFAULTS = {
  "vocab_size": 49408,
  "hidden_size": 512,
  "intermediate_size": 2048,
  "num_hidden_layers": 12,
  "num_attention_heads": 8,
  "max_position_embeddings": 77,
  "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-5,
  "eos_token_id": 49407,
}
VISION_DEFAULTS = {
  "hidden_size": 768,
  "intermediate_size": 3072,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "num_channels": 3,
  "image_size": 224,
  "patch_size": 32,
  "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-5,
}
PROJECTION_DIM = 512
LEGACY_EOS = 2  # `transformers` pools at the largest id for configs written before its PR #24773.


def tower_config(config: Mapping[str, Any], tower: str) -> dict[str, Any]:
  """The "text" or "vision" sub-config with defaults, and the model's `projection_dim`."""
  defaults = TEXT_DEFAULTS if tower == "text" else VISION_DEFAULTS
  merged = vl.sub_config(config, f"{tower}_config", defaults)
  merged["projection_dim"] = config.get("projection_dim") or PROJECTION_DIM
  return merged


def patch_layout(c: Mapping[str, Any], what: str, class_token: bool, bias: bool) -> vl.Layout:
  """`vision_model.embeddings` (`PatchEmbeddings` with these flags), shared by CLIP and SigLIP."""
  width, patch = c["hidden_size"], vl.square(c, "patch_size", what)
  positions = (vl.square(c, "image_size", what) // patch) ** 2 + class_token
  layout: vl.Layout = {}
  if class_token:
    layout["vision_model.embeddings.class_embedding"] = vl.Entry("copy", (width,))
  conv = vl.Entry("conv", (width, c["num_channels"], patch, patch))
  layout["vision_model.embeddings.patch_embedding.weight"] = conv
  if bias:
    layout["vision_model.embeddings.patch_embedding.bias"] = vl.Entry("copy", (width,))
  layout["vision_model.embeddings.position_embedding.weight"] = vl.Entry("embed", (positions, width))
  return layout


def text_tower_layout(c: Mapping[str, Any]) -> vl.Layout:
  """`TokenEmbeddings`, the encoder and `final_layer_norm` under `text_model.`; towers add their head."""
  width = c["hidden_size"]
  layout: vl.Layout = {
    "text_model.embeddings.token_embedding.weight": vl.Entry("embed", (c["vocab_size"], width)),
    "text_model.embeddings.position_embedding.weight": vl.Entry(
      "embed", (c["max_position_embeddings"], width)
    ),
  }
  vl.encoder_layout(layout, "text_model.encoder", c)
  vl.norm(layout, "text_model.final_layer_norm", width)
  return layout


def vision_layout(config: Mapping[str, Any]) -> vl.Layout:
  c = tower_config(config, "vision")
  layout = patch_layout(c, "clip_vision", class_token=True, bias=False)
  vl.norm(layout, "vision_model.pre_layrnorm", c["hidden_size"])
  vl.encoder_layout(layout, "vision_model.encoder", c)
  vl.norm(layout, "vision_model.post_layernorm", c["hidden_size"])
  vl.linear(layout, "visual_projection", c["hidden_size"], c["projection_dim"], bias=False)
  return layout


def text_layout(config: Mapping[str, Any]) -> vl.Layout:
  c = tower_config(config, "text")
  layout = text_tower_layout(c)
  vl.linear(layout, "text_projection", c["hidden_size"], c["projection_dim"], bias=False)
  return layout


FORMATS.add(
  "clip_vision", vl.LayoutFormat(MODEL_TYPES, ("vision_model.", "visual_projection."), vision_layout)
)
FORMATS.add("clip_text", vl.LayoutFormat(MODEL_TYPES, ("text_model.", "text_projection."), text_layout))


class PatchEmbeddings(nn.Module):
  """Non-overlapping patches by a stride-`patch` conv (`patch_embedding`), an optional `class_embedding`
  token first, plus a learned `position_embedding` per token. Input [B, H, W, C] with H = W = `image_size`."""

  width: int
  patch: int
  image_size: int
  class_token: bool
  bias: bool
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
      raise ConfigError(
        f"image input of shape {tuple(x.shape)} does not fit the checkpoint: expected "
        f"[B, {self.image_size}, {self.image_size}, C] (position embeddings are not interpolated)"
      )
    conv = nn.Conv(
      self.width,
      (self.patch, self.patch),
      strides=(self.patch, self.patch),
      padding="VALID",
      use_bias=self.bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="patch_embedding",
    )
    y = conv(x.astype(self.dtype))
    y = y.reshape(y.shape[0], -1, self.width)  # row-major over the grid, as torch's flatten(2)
    if self.class_token:
      cls = self.param("class_embedding", nn.initializers.normal(0.02), (self.width,), jnp.float32)
      y = jnp.concatenate([jnp.broadcast_to(cls.astype(y.dtype), (y.shape[0], 1, self.width)), y], axis=1)
    positions = nn.Embed(y.shape[1], self.width, dtype=self.dtype, name="position_embedding")
    return y + positions(jnp.arange(y.shape[1]))[None]


class TokenEmbeddings(nn.Module):
  """`token_embedding` of the ids plus `position_embedding` of their positions 0..T-1."""

  vocab_size: int
  width: int
  max_positions: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    if ids.ndim != 2 or ids.shape[1] > self.max_positions:
      raise ConfigError(
        f"token ids of shape {tuple(ids.shape)} do not fit the checkpoint: expected [B, T] with "
        f"T <= max_position_embeddings = {self.max_positions}"
      )
    tokens = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="token_embedding")
    positions = nn.Embed(self.max_positions, self.width, dtype=self.dtype, name="position_embedding")
    return tokens(ids) + positions(jnp.arange(ids.shape[1]))[None]


def eos_positions(ids: jnp.ndarray, eos_token_id: Any) -> jnp.ndarray:
  """[B] index of the end-of-text token per sequence, exactly as `CLIPTextModel` picks it."""
  if not isinstance(eos_token_id, int):
    raise ConfigError(f"clip_text: text_config eos_token_id must be one int, got {eos_token_id!r}")
  if eos_token_id == LEGACY_EOS:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == eos_token_id, axis=-1)  # The first EOS; 0 when a row has none.


@ENCODERS.register("clip_vision")
class ClipVision(vl.Tower):
  """CLIP's image tower: patches + class token -> pre_layrnorm -> encoder -> post_layernorm(class token)
  -> visual_projection. [B, H, W, 3] normalised pixels -> image_embeds [B, projection_dim] float32."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    del mask, train  # Images have no padding; there is no dropout.
    c, spec, dtype = self.settings(tower_config, "clip", "vision")
    patch, size = vl.square(c, "patch_size", "clip_vision"), vl.square(c, "image_size", "clip_vision")
    h = PatchEmbeddings(c["hidden_size"], patch, size, True, False, dtype, name="embeddings")(x)
    h = vl.layer_norm(spec.eps, dtype, "pre_layrnorm")(h)
    h = vl.Encoder(spec, dtype, name="encoder")(h)
    pooled = vl.layer_norm(spec.eps, dtype, "post_layernorm")(h[:, 0])
    embeds = vl.dense(c["projection_dim"], dtype, "visual_projection", use_bias=False)(pooled)
    return embeds.astype(jnp.float32)


def encode_text(
  c: Mapping[str, Any], spec: vl.EncoderSpec, dtype: jnp.dtype, ids: jnp.ndarray, mask: jnp.ndarray | None
) -> jnp.ndarray:
  """The CLIP-family text trunk, shared with SigLIP: token + position embeddings -> encoder (attention
  allowed where `mask` [B|1, 1, T|1, T] is true, or everywhere for None) -> final_layer_norm; [B, T, W].
  Called inside a tower's compact `__call__`, whose submodules these become."""
  width, positions = c["hidden_size"], c["max_position_embeddings"]
  h = TokenEmbeddings(c["vocab_size"], width, positions, dtype, name="embeddings")(ids)
  h = vl.Encoder(spec, dtype, name="encoder")(h, mask)
  return vl.layer_norm(spec.eps, dtype, "final_layer_norm")(h)


@ENCODERS.register("clip_text")
class ClipText(vl.Tower):
  """CLIP's text tower: tokens + positions -> causal encoder -> final_layer_norm -> the EOS token ->
  text_projection. Ids [B, T] and mask [B, T] -> text_embeds [B, projection_dim] float32."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    del train  # There is no dropout.
    c, spec, dtype = self.settings(tower_config, "clip", "text")
    ids = jnp.asarray(x).astype(jnp.int32)
    length = ids.shape[-1]
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, queries, keys]
    if mask is not None:
      allowed = allowed & jnp.asarray(mask).astype(bool)[:, None, None, :]
    h = encode_text(c, spec, dtype, ids, allowed)
    pooled = h[jnp.arange(h.shape[0]), eos_positions(ids, c["eos_token_id"])]
    embeds = vl.dense(c["projection_dim"], dtype, "text_projection", use_bias=False)(pooled)
    return embeds.astype(jnp.float32)
