"""The Audio Spectrogram Transformer (AST, Gong et al. 2021) as a pretrained tower: encoder "ast".

The same function as transformers' `ASTModel`, in Flax, with its architecture read from a Hugging Face
checkpoint directory's `config.json` (model_type "audio-spectrogram-transformer", any size):

    {"encoder": "ast", "checkpoint": "/path/to/ast-finetuned-audioset-10-10-0.4593"}

Input: [B, max_length frames, num_mel_bins] float32 log-mel features, as `ASTFeatureExtractor` (and
`mmlearn.pretrained.audio_features.FilterBank`, from the same directory) produces them; other sizes are
refused, since the position embeddings are fixed by the config. Output: [B, hidden_size] float32, HF's
`pooler_output`: the mean of the CLS and distillation tokens after the final LayerNorm.

The forward pass, as HF's:
  - patches: the features are read as an image [frequency, time] (HF: `unsqueeze(1).transpose(2, 3)`)
    and embedded by a `patch_size` x `patch_size` convolution, strides (`frequency_stride`,
    `time_stride`), no padding; tokens in frequency-major order (F' x T' of them);
  - [CLS, distillation, patches] + learned position embeddings;
  - `num_hidden_layers` pre-LN blocks (x + Attention(LN(x)), x + MLP(LN(x))), `hidden_act` in the MLP,
    q/k/v biases if `qkv_bias`, LayerNorms with `layer_norm_eps`; a final LayerNorm.
Dropout is not applied (HF's released configs set both rates to 0); `mask` is ignored, since the
features are fixed-length with zero-padded frames, as HF feeds them.

Precision: `dtype` is the computation dtype; parameters are float32; LayerNorm statistics and the
attention logits and softmax are float32 (`vit_layers.attend`), and the output is float32.

`load` and `freeze` are read by the run's setup, not by the forward pass: `load` replaces the randomly
initialised parameters with the checkpoint's (`FORMATS["ast"].to_params`), and `freeze` keeps them fixed
while training. The embeddings' parameters are named as HF's (`patch_embeddings`, `cls_token`,
`distillation_token`, `position_embeddings`, the final `layernorm`); the blocks are
`mmlearn.pretrained.vit_layers`' (`encoder/layers_{i}/self_attn|mlp|layer_norm1|layer_norm2`), the same
computation as HF's ViT layer, and `layout` maps HF's block names onto theirs.

The checkpoint <-> parameter mapping is `ASTFormat`, registered in `mmlearn.pretrained.formats.FORMATS`
as "ast". Tensor names are those `save_pretrained` writes (transformers 4 and 5 alike, and the hub's AST
checkpoints): `embeddings.*`, `encoder.layer.{i}.*`, `layernorm.*`; an `ASTForAudioClassification`
checkpoint (its config's `architectures`) has them under `audio_spectrogram_transformer.`, and its
`classifier.*` head is not part of the tower.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmlearn.errors import CheckpointError, ConfigError
from mmlearn.models.encoders import ENCODERS, computation_dtype
from mmlearn.pretrained import checkpoint
from mmlearn.pretrained import vit_layers as vl
from mmlearn.pretrained.formats import FORMATS, Params, Tensors

MODEL_TYPES: tuple[str, ...] = ("audio-spectrogram-transformer",)
CLASSIFICATION_PREFIX = "audio_spectrogram_transformer."


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What `config.json` says about the tower's shapes (HF `ASTConfig`'s defaults for missing keys)."""

  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  patch_size: int = 16
  qkv_bias: bool = True
  frequency_stride: int = 10
  time_stride: int = 10
  max_length: int = 1024
  num_mel_bins: int = 128
  head_dim: int | None = None  # hidden_size // num_attention_heads unless the config says

  @classmethod
  def from_config(cls, config: Mapping[str, Any], where: str) -> "Architecture":
    """The architecture of `config` (a parsed config.json); a `CheckpointError` naming `where` if unusable."""
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if config.get(f.name) is not None}
    arch = cls(**values)
    for f in dataclasses.fields(cls):
      value = getattr(arch, f.name)
      if f.name in ("hidden_act", "layer_norm_eps", "qkv_bias") or value is None:
        continue
      least = 0 if f.name == "num_hidden_layers" else 1
      if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise CheckpointError(f"{where}: {f.name} must be a positive integer, got {value!r}")
    if arch.hidden_act not in vl.ACTIVATIONS:
      known = ", ".join(vl.ACTIVATIONS)
      raise CheckpointError(f"{where}: hidden_act {arch.hidden_act!r} is not one of {known}")
    if arch.head_dim is None and arch.hidden_size % arch.num_attention_heads:
      raise CheckpointError(
        f"{where}: hidden_size {arch.hidden_size} is not divisible by num_attention_heads "
        f"{arch.num_attention_heads}"
      )
    if arch.patch_size > min(arch.max_length, arch.num_mel_bins):
      raise CheckpointError(
        f"{where}: patch_size {arch.patch_size} exceeds max_length {arch.max_length} or num_mel_bins "
        f"{arch.num_mel_bins}"
      )
    return arch

  @property
  def heads_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def spec(self) -> vl.EncoderSpec:
    """The encoder's blocks: HF's ViT layer is `vl.EncoderLayer`; Linear kernels init as HF's, N(0, 0.02)."""
    return vl.EncoderSpec(
      self.num_hidden_layers,
      self.num_attention_heads,
      self.intermediate_size,
      self.hidden_act,
      self.layer_norm_eps,
      qkv_bias=self.qkv_bias,
      head_dim=self.head_dim,
      init_std=0.02,
    )

  @property
  def grid(self) -> tuple[int, int]:
    """Patches along (frequency, time), as HF's `ASTEmbeddings.get_shape`."""
    return (
      (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1,
      (self.max_length - self.patch_size) // self.time_stride + 1,
    )

  @property
  def num_tokens(self) -> int:
    """Patches + the CLS and distillation tokens."""
    return math.prod(self.grid) + 2


@functools.lru_cache(maxsize=16)
def architecture(directory: str) -> Architecture:
  """The architecture of the checkpoint in `directory` (its config.json, read once per process)."""
  config = checkpoint.read_config(directory, MODEL_TYPES)
  return Architecture.from_config(config, str(Path(directory) / checkpoint.CONFIG))


@ENCODERS.register("ast")
class AudioSpectrogramTransformer(vl.Tower):
  """A pretrained AST tower: features [B, max_length, num_mel_bins] -> pooled [B, hidden_size] float32.

  Its fields are `vl.Tower`'s: `checkpoint` (a Hugging Face AST checkpoint directory), `load`, `freeze`
  (read by the run's setup, not here) and `dtype` (e.g. "bfloat16"; parameters and output are float32).
  """

  @property
  def arch(self) -> Architecture:
    return architecture(os.fspath(self.checkpoint))

  @nn.compact
  def tokens(self, x: jnp.ndarray) -> jnp.ndarray:
    """HF's `last_hidden_state`: [B, 2 + patches, hidden_size] float32, after the final LayerNorm."""
    arch = self.arch
    dtype = computation_dtype(self.dtype, "encoder 'ast'")
    if x.ndim != 3 or x.shape[1:] != (arch.max_length, arch.num_mel_bins):
      raise ConfigError(
        f"encoder 'ast' ({self.checkpoint}) reads features [B, {arch.max_length} frames, {arch.num_mel_bins} "
        f"mel bins], got shape {tuple(x.shape)}; extract them with the checkpoint's preprocessor_config.json"
      )
    b, d = x.shape[0], arch.hidden_size
    # [B, T, F] -> [B, F, T, 1]: HF convolves the features as an image of height F (frequency), width T.
    image = jnp.swapaxes(x, 1, 2)[..., None].astype(dtype)
    patches = nn.Conv(
      d,
      (arch.patch_size, arch.patch_size),
      strides=(arch.frequency_stride, arch.time_stride),
      padding="VALID",
      dtype=dtype,
      param_dtype=jnp.float32,
      name="patch_embeddings",
    )(image)
    patches = patches.reshape(b, -1, d)  # frequency-major, as HF's flatten(2)
    init = nn.initializers.normal(0.02)
    cls = self.param("cls_token", init, (1, 1, d), jnp.float32)
    distillation = self.param("distillation_token", init, (1, 1, d), jnp.float32)
    position = self.param("position_embeddings", init, (1, arch.num_tokens, d), jnp.float32)
    special = jnp.broadcast_to(jnp.concatenate([cls, distillation], axis=1), (b, 2, d)).astype(dtype)
    h = jnp.concatenate([special, patches], axis=1) + position.astype(dtype)
    h = vl.Encoder(arch.spec, dtype, name="encoder")(h)
    return vl.layer_norm(arch.layer_norm_eps, dtype, "layernorm")(h).astype(jnp.float32)

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """HF's `pooler_output`: (CLS + distillation) / 2, [B, hidden_size] float32; `mask` and `train` unused."""
    del mask, train
    h = self.tokens(x)
    return (h[:, 0] + h[:, 1]) / 2


def layout(arch: Architecture, prefix: str) -> vl.Layout:
  """Every tensor of the tower: its HF name (under `prefix`), shape, conversion and Flax path. HF's ViT
  layer names (`attention.attention.query`, `intermediate.dense`, `layernorm_before`, ...) map onto
  `vl.EncoderLayer`'s (`self_attn/q_proj`, `mlp/fc1`, `layer_norm1`, ...)."""
  d, inner, p = arch.hidden_size, arch.num_attention_heads * arch.heads_dim, arch.patch_size
  out: vl.Layout = {}
  for name, shape in (("cls_token", (1, 1, d)), ("distillation_token", (1, 1, d))):
    out[f"{prefix}embeddings.{name}"] = vl.Entry("copy", shape, (name,))
  positions = (1, arch.num_tokens, d)
  out[f"{prefix}embeddings.position_embeddings"] = vl.Entry("copy", positions, ("position_embeddings",))
  patches = f"{prefix}embeddings.patch_embeddings.projection"
  out[f"{patches}.weight"] = vl.Entry("conv", (d, 1, p, p), ("patch_embeddings", "kernel"))
  out[f"{patches}.bias"] = vl.Entry("copy", (d,), ("patch_embeddings", "bias"))
  vl.norm(out, f"{prefix}layernorm", d, ("layernorm",))
  for i in range(arch.num_hidden_layers):
    hf, layer = f"{prefix}encoder.layer.{i}", ("encoder", f"layers_{i}")
    attention, mlp = (*layer, "self_attn"), (*layer, "mlp")
    for hf_name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      vl.linear(out, f"{hf}.attention.attention.{hf_name}", d, inner, arch.qkv_bias, (*attention, proj))
    vl.linear(out, f"{hf}.attention.output.dense", inner, d, path=(*attention, "out_proj"))
    vl.norm(out, f"{hf}.layernorm_before", d, (*layer, "layer_norm1"))
    vl.linear(out, f"{hf}.intermediate.dense", d, arch.intermediate_size, path=(*mlp, "fc1"))
    vl.linear(out, f"{hf}.output.dense", arch.intermediate_size, d, path=(*mlp, "fc2"))
    vl.norm(out, f"{hf}.layernorm_after", d, (*layer, "layer_norm2"))
  return out


class ASTFormat:
  """HF `ASTModel` tensors <-> the `ast` tower's parameters.

  Linear weights [out, in] are Dense kernels [in, out]; the patch convolution's OIHW weight [D, 1,
  p_freq, p_time] is the HWIO kernel [p_freq, p_time, 1, D] (the tower convolves [B, F, T, 1], HF's
  transposed input); LayerNorm `weight` is `scale`; tokens and position embeddings keep their shapes.
  Everything else is a rename, so `to_tensors(to_params(t))` returns `t` bit for bit.
  """

  model_types: tuple[str, ...] = MODEL_TYPES

  @staticmethod
  def prefix(config: Mapping[str, Any]) -> str:
    """The tower's tensor name prefix: `audio_spectrogram_transformer.` in a classification checkpoint."""
    architectures = config.get("architectures") or []
    return CLASSIFICATION_PREFIX if "ASTForAudioClassification" in architectures else ""

  def to_params(self, tensors: Tensors, config: Mapping[str, Any], where: str) -> Params:
    prefix = self.prefix(config)
    found = {name: value for name, value in tensors.items() if name.startswith(prefix)}
    return vl.layout_params(layout(Architecture.from_config(config, where), prefix), found, where)

  def to_tensors(self, params: Params, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arch = Architecture.from_config(config, "config.json")
    return vl.layout_tensors(layout(arch, self.prefix(config)), params)


FORMATS.add("ast", ASTFormat())
