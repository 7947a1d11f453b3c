"""SigLIP's two towers as encoders, equal to `transformers`' `SiglipModel` and read from its checkpoints.

    {"encoder": "siglip_vision", "checkpoint": "/path/to/siglip-base-patch16-224"}   # -> image_embeds
    {"encoder": "siglip_text", "checkpoint": "/path/to/siglip-base-patch16-224"}     # -> text_embeds

As `mmlearn.pretrained.clip` (read its docstring for `checkpoint`, `load`, `freeze` and `dtype`), with
SigLIP's architecture: the image tower has no class token and pools with a multihead-attention head
(`head`: a learned `probe` query attends over the post-LayerNorm patch tokens, then a residual MLP); the
text tower is bidirectional and pools the *last position* (`[:, -1]`) through a biased `head` Dense.
Each returns what `SiglipModel.get_image_features` / `get_text_features` return (unnormalised).

Inputs: pixel values [B, H, W, 3] normalised as `preprocessor_config.json` says (SigLIP: to [-1, 1]); token
ids [B, T]. SigLIP is trained on ids padded to `max_position_embeddings` (64) with the pad token and no
attention mask: its tokenizer appends EOS and no BOS, and the pooled last position is then a padding
token, whose state still depends on every real token. Feed ids padded the same way with `mask=None` to
reproduce the released model; a `mask` (1 = real) makes padding keys invisible, as `transformers` does
when given an `attention_mask`, which changes the output.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ENCODERS
from mmlearn.pretrained import vit_layers as vl
from mmlearn.pretrained.clip import PatchEmbeddings, encode_text, patch_layout, text_tower_layout
from mmlearn.pretrained.formats import FORMATS

MODEL_TYPES = ("siglip",)
# `transformers`' SiglipTextConfig / SiglipVisionConfig defaults for keys a config.json omits.
TEXT_DEFAULTS = {
  "vocab_size": 32000,
  "hidden_size": 768,
  "intermediate_size": 3072,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "max_position_embeddings": 64,
  "hidden_act": "gelu_pytorch_tanh",
  "layer_norm_eps": 1e-6,
  "projection_size": None,  # None: hidden_size.
}
VISION_DEFAULTS = {
  "hidden_size": 768,
  "intermediate_size": 3072,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "num_channels": 3,
  "image_size": 224,
  "patch_size": 16,
  "hidden_act": "gelu_pytorch_tanh",
  "layer_norm_eps": 1e-6,
  "vision_use_head": True,
}


def tower_config(config: Mapping[str, Any], tower: str) -> dict[str, Any]:
  """The "text" or "vision" sub-config with `transformers`' defaults filled in."""
  c = vl.sub_config(config, f"{tower}_config", TEXT_DEFAULTS if tower == "text" else VISION_DEFAULTS)
  if tower == "text" and c["projection_size"] is None:
    c["projection_size"] = c["hidden_size"]
  if tower == "vision" and not c["vision_use_head"]:
    raise ConfigError("siglip_vision: vision_use_head is false; only the attention-pooling head is supported")
  return c


def vision_layout(config: Mapping[str, Any]) -> vl.Layout:
  c = tower_config(config, "vision")
  width, intermediate = c["hidden_size"], c["intermediate_size"]
  layout = patch_layout(c, "siglip_vision", class_token=False, bias=True)
  vl.encoder_layout(layout, "vision_model.encoder", c)
  vl.norm(layout, "vision_model.post_layernorm", width)
  head = "vision_model.head"
  layout[f"{head}.probe"] = vl.Entry("copy", (1, 1, width))
  # torch.nn.MultiheadAttention packs q, k, v into one [3W, W] projection.
  layout[f"{head}.attention.in_proj_weight"] = vl.Entry(
    "linear", (3 * width, width), ("head", "attention", "in_proj", "kernel")
  )
  layout[f"{head}.attention.in_proj_bias"] = vl.Entry(
    "copy", (3 * width,), ("head", "attention", "in_proj", "bias")
  )
  vl.linear(layout, f"{head}.attention.out_proj", width, width)
  vl.norm(layout, f"{head}.layernorm", width)
  vl.linear(layout, f"{head}.mlp.fc1", width, intermediate)
  vl.linear(layout, f"{head}.mlp.fc2", intermediate, width)
  return layout


def text_layout(config: Mapping[str, Any]) -> vl.Layout:
  c = tower_config(config, "text")
  layout = text_tower_layout(c)
  vl.linear(layout, "text_model.head", c["hidden_size"], c["projection_size"])
  return layout


FORMATS.add("siglip_vision", vl.LayoutFormat(MODEL_TYPES, ("vision_model.",), vision_layout))
FORMATS.add("siglip_text", vl.LayoutFormat(MODEL_TYPES, ("text_model.",), text_layout))


class InProjection(nn.Module):
  """The packed q/k/v projection of torch's MultiheadAttention: `kernel` [W, 3W] (q, k, v side by side)."""

  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    width = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (width, 3 * width), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (3 * width,), jnp.float32)
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    q = query @ kernel[:, :width] + bias[:width]
    k = x @ kernel[:, width : 2 * width] + bias[width : 2 * width]
    v = x @ kernel[:, 2 * width :] + bias[2 * width :]
    return q, k, v


class PoolingAttention(nn.Module):
  """torch's `nn.MultiheadAttention` (batch first) with its state-dict names: `in_proj`, `out_proj`."""

  heads: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    q, k, v = InProjection(self.dtype, name="in_proj")(query, x)
    return vl.dense(x.shape[-1], self.dtype, "out_proj")(vl.attend(q, k, v, self.heads, None))


class AttentionPoolingHead(nn.Module):
  """SigLIP's MAP head: the learned `probe` attends over the tokens, then y + mlp(layernorm(y)); -> [B, W].
  Its shape is the encoder's (`spec`: heads, intermediate width, activation, LayerNorm eps)."""

  spec: vl.EncoderSpec
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, width), jnp.float32)
    probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, width))
    y = PoolingAttention(self.spec.heads, self.dtype, name="attention")(probe, x)
    z = vl.layer_norm(self.spec.eps, self.dtype, "layernorm")(y)
    y = y + vl.Mlp(self.spec, self.dtype, name="mlp")(z)
    return y[:, 0]


@ENCODERS.register("siglip_vision")
class SiglipVision(vl.Tower):
  """SigLIP's image tower: patches + positions -> encoder -> post_layernorm -> attention-pooling head.
  [B, H, W, 3] normalised pixels -> image_embeds [B, hidden_size] float32."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    del mask, train  # Images have no padding; there is no dropout.
    c, spec, dtype = self.settings(tower_config, "siglip", "vision")
    patch, size = vl.square(c, "patch_size", "siglip_vision"), vl.square(c, "image_size", "siglip_vision")
    h = PatchEmbeddings(c["hidden_size"], patch, size, False, True, dtype, name="embeddings")(x)
    h = vl.Encoder(spec, dtype, name="encoder")(h)
    h = vl.layer_norm(spec.eps, dtype, "post_layernorm")(h)
    return AttentionPoolingHead(spec, dtype, name="head")(h).astype(jnp.float32)


@ENCODERS.register("siglip_text")
class SiglipText(vl.Tower):
  """SigLIP's text tower: tokens + positions -> bidirectional encoder -> final_layer_norm -> the last
  position -> head. Ids [B, T] (and an optional mask) -> text_embeds [B, projection_size] float32.

  SigLIP was trained, and is released to be used, on text padded to its full length with the pad token
  (`</s>`) and no attention mask: the pads attend like any token, and the last one is pooled. With
  `pad_masked` (the default) a mask is read that way: its padding positions become the pad token and
  no attention mask is applied, so mmlearn's 0-padded batches score exactly as the released model
  does. `pad_masked=False` uses the mask as an attention mask instead (the reference called with
  `attention_mask`).
  """

  pad_masked: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    del train  # There is no dropout.
    c, spec, dtype = self.settings(tower_config, "siglip", "text")
    ids = jnp.asarray(x).astype(jnp.int32)
    if mask is not None and self.pad_masked:
      ids, mask = jnp.where(jnp.asarray(mask).astype(bool), ids, c.get("pad_token_id", 1)), None
    allowed = None if mask is None else jnp.asarray(mask).astype(bool)[:, None, None, :]
    h = encode_text(c, spec, dtype, ids, allowed)
    return vl.dense(c["projection_size"], dtype, "head")(h[:, -1]).astype(jnp.float32)
