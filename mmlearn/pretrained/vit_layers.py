"""The Transformer blocks CLIP, SigLIP and AST share, named as Hugging Face's CLIP names them, and the
tensor layout machinery of all three towers.

The three towers are the same pre-LN Transformer (`x + attn(LN1(x))`, then `x + mlp(LN2(x))`; AST's is
HF's ViT layer) with different embeddings, pooling and heads; `EncoderSpec` holds what varies between
their blocks. The blocks mirror `transformers`' CLIP module tree name for name
(`encoder/layers_0/self_attn/q_proj`, `mlp/fc1`, `layer_norm1`), so a CLIP or SigLIP tensor's Flax path
follows from its name by one rule (`flax_path`), AST's layout names its paths, and the mapping each way
is a transpose at most. The CLIP-family embeddings live in `mmlearn.pretrained.clip`.

Numerics follow the reference: LayerNorm statistics use the two-pass variance (as PyTorch) in float32,
the attention softmax is float32, and masked logits are set to the float32 minimum (a fully masked row
then averages its values instead of producing NaN). Everything else computes in the module's `dtype`
with float32 parameters.

The layout half (`Layout`, `layout_params`, `layout_tensors`, `LayoutFormat`) describes a tower's
tensors from its config: checkpoint names, shapes and how each maps to a Flax parameter. It serves three
uses at once, so they cannot disagree: the layout `check_fits` validates a file against, `to_params` and
its exact inverse `to_tensors`.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import computation_dtype
from mmlearn.pretrained.checkpoint import check_fits, read_config

# `transformers`' ACT2FN names; gelu_new, gelu_fast and gelu_pytorch_tanh are all the tanh approximation.
ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}


def activation(name: str, what: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """The `hidden_act` of a config by its `transformers` name; a `ConfigError` for one not implemented."""
  if name not in ACTIVATIONS:
    raise ConfigError(
      f"{what}: hidden_act {name!r} is not supported; known: {', '.join(sorted(ACTIVATIONS))}"
    )
  return ACTIVATIONS[name]


def layer_norm(eps: float, dtype: DTypeLike, name: str) -> nn.LayerNorm:
  """PyTorch's LayerNorm: float32 two-pass statistics, `eps` from the config, float32 parameters."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


def dense(
  features: int, dtype: DTypeLike, name: str, use_bias: bool = True, init_std: float | None = None
) -> nn.Dense:
  """A float32-parameter Dense; kernels drawn from N(0, init_std^2) if given (HF's ViT init), else Flax's."""
  init = nn.initializers.lecun_normal() if init_std is None else nn.initializers.normal(init_std)
  return nn.Dense(
    features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name
  )


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """The encoder's shape as a config gives it, one value shared by every block (and SigLIP's head).

  `qkv_bias`, `head_dim` (None: width // heads) and `init_std` (None: Flax's kernel init) are AST's
  knobs; CLIP and SigLIP keep the defaults.
  """

  layers: int
  heads: int
  intermediate: int
  act: str
  eps: float
  qkv_bias: bool = True
  head_dim: int | None = None
  init_std: float | None = None

  @classmethod
  def of(cls, c: Mapping[str, Any], what: str) -> "EncoderSpec":
    """From a CLIP or SigLIP sub-config; a `ConfigError` naming `what` if heads do not divide the width."""
    if c["hidden_size"] % c["num_attention_heads"]:
      raise ConfigError(
        f"{what}: hidden_size {c['hidden_size']} is not divisible by {c['num_attention_heads']} heads"
      )
    return cls(
      c["num_hidden_layers"],
      c["num_attention_heads"],
      c["intermediate_size"],
      c["hidden_act"],
      c["layer_norm_eps"],
    )


def attend(
  q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, heads: int, mask: jnp.ndarray | None
) -> jnp.ndarray:
  """Scaled dot-product attention of q [B, Tq, W] over k, v [B, Tk, W]; mask bool [B, 1, Tq|1, Tk]."""
  (batch, queries, width), keys = q.shape, k.shape[1]
  head_dim = width // heads
  q = q.reshape(batch, queries, heads, head_dim)
  k = k.reshape(batch, keys, heads, head_dim)
  v = v.reshape(batch, keys, heads, head_dim)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, queries, width)


class Attention(nn.Module):
  """Multi-head self-attention with separate `q_proj`, `k_proj`, `v_proj` (biased if `qkv_bias`) and
  `out_proj` (biased); q/k/v are `heads * head_dim` wide."""

  spec: EncoderSpec
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    s, width = self.spec, x.shape[-1]
    inner = s.heads * s.head_dim if s.head_dim else width
    q, k, v = (
      dense(inner, self.dtype, name, s.qkv_bias, s.init_std)(x) for name in ("q_proj", "k_proj", "v_proj")
    )
    return dense(width, self.dtype, "out_proj", init_std=s.init_std)(attend(q, k, v, s.heads, mask))


class Mlp(nn.Module):
  """`fc1` -> activation -> `fc2`."""

  spec: EncoderSpec
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    s = self.spec
    y = activation(s.act, "mlp")(dense(s.intermediate, self.dtype, "fc1", init_std=s.init_std)(x))
    return dense(x.shape[-1], self.dtype, "fc2", init_std=s.init_std)(y)


class EncoderLayer(nn.Module):
  """Pre-LN block: x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""

  spec: EncoderSpec
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    y = layer_norm(self.spec.eps, self.dtype, "layer_norm1")(x)
    x = x + Attention(self.spec, self.dtype, name="self_attn")(y, mask)
    y = layer_norm(self.spec.eps, self.dtype, "layer_norm2")(x)
    return x + Mlp(self.spec, self.dtype, name="mlp")(y)


class Encoder(nn.Module):
  """`spec.layers` `EncoderLayer`s named `layers_0`, ... (HF: `encoder.layers.0`); no final norm."""

  spec: EncoderSpec
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    for i in range(self.spec.layers):
      x = EncoderLayer(self.spec, self.dtype, name=f"layers_{i}")(x, mask)
    return x


class Tower(nn.Module):
  """The fields every pretrained tower has. `checkpoint`'s config.json fixes the architecture; `load`
  and `freeze` are read by the run's setup, not by the forward pass (see `mmlearn.pretrained.clip`);
  `dtype` is the computation dtype (parameters and outputs are float32)."""

  checkpoint: str
  load: bool = True
  freeze: bool = False
  dtype: DTypeLike = jnp.float32

  def settings(
    self, tower_config: Callable[[Mapping[str, Any], str], dict[str, Any]], model_type: str, tower: str
  ) -> tuple[dict[str, Any], EncoderSpec, jnp.dtype]:
    """(`tower_config` of the checkpoint's config, its encoder's spec, the computation dtype); errors
    name the encoder, e.g. "clip_vision"."""
    what = f"{model_type}_{tower}"
    c = tower_config(cached_config(self.checkpoint, model_type), tower)
    return c, EncoderSpec.of(c, what), computation_dtype(self.dtype, what)


# ----- The tensor layout: checkpoint name -> (how it maps, shape). -----

# Kinds: "linear" (torch [out, in] <-> Flax kernel [in, out]), "conv" (OIHW <-> HWIO), "norm" (weight <->
# scale), "embed" (weight <-> embedding) and "copy" (the same array, e.g. biases, class tokens).
_WEIGHT_NAME = {"linear": "kernel", "conv": "kernel", "norm": "scale", "embed": "embedding"}
TOWER_ROOTS = ("vision_model", "text_model")  # Dropped from a name: the tower module is the model.


@dataclasses.dataclass(frozen=True)
class Entry:
  kind: str
  shape: tuple[int, ...]
  path: tuple[str, ...] | None = None  # The Flax path when the naming rule does not give it.


Layout = dict[str, Entry]


def flax_path(name: str, entry: Entry) -> tuple[str, ...]:
  """`vision_model.encoder.layers.0.mlp.fc1.weight` -> ("encoder", "layers_0", "mlp", "fc1", "kernel")."""
  if entry.path is not None:
    return entry.path
  parts = name.split(".")
  if parts[0] in TOWER_ROOTS:
    parts = parts[1:]
  path: list[str] = []
  for part in parts:
    if part.isdigit():
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  if path[-1] == "weight" and entry.kind in _WEIGHT_NAME:
    path[-1] = _WEIGHT_NAME[entry.kind]
  return tuple(path)


def _under(path: tuple[str, ...] | None, leaf: str) -> tuple[str, ...] | None:
  return None if path is None else (*path, leaf)


def linear(
  layout: Layout, name: str, n_in: int, n_out: int, bias: bool = True, path: tuple[str, ...] | None = None
) -> None:
  """A torch Linear `name` (at Flax module `path` if the naming rule does not give it)."""
  layout[f"{name}.weight"] = Entry("linear", (n_out, n_in), _under(path, "kernel"))
  if bias:
    layout[f"{name}.bias"] = Entry("copy", (n_out,), _under(path, "bias"))


def norm(layout: Layout, name: str, width: int, path: tuple[str, ...] | None = None) -> None:
  layout[f"{name}.weight"] = Entry("norm", (width,), _under(path, "scale"))
  layout[f"{name}.bias"] = Entry("copy", (width,), _under(path, "bias"))


def encoder_layout(layout: Layout, prefix: str, c: Mapping[str, Any]) -> None:
  """The tensors of `Encoder` under `prefix` (e.g. "vision_model.encoder") for a CLIP or SigLIP sub-config."""
  width, intermediate = c["hidden_size"], c["intermediate_size"]
  for i in range(c["num_hidden_layers"]):
    block = f"{prefix}.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      linear(layout, f"{block}.self_attn.{proj}", width, width)
    norm(layout, f"{block}.layer_norm1", width)
    linear(layout, f"{block}.mlp.fc1", width, intermediate)
    linear(layout, f"{block}.mlp.fc2", intermediate, width)
    norm(layout, f"{block}.layer_norm2", width)


def _to_flax(kind: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  return np.array(value, np.float32)  # A copy: `value` may be a view of the file (`MappedTensors`).


def _to_torch(kind: str, value: Any) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  return value.copy(order="C")  # Not ascontiguousarray, which turns a 0-d array into shape (1,).


def layout_params(layout: Layout, found: dict[str, np.ndarray], where: str) -> dict:
  """The Flax parameter tree of `found` (this tower's tensors; emptied as they convert) after
  `check_fits` against `layout`."""
  check_fits({name: (entry.shape, np.dtype(np.float32)) for name, entry in layout.items()}, found, where)
  params: dict[str, Any] = {}
  for name, entry in layout.items():
    *parents, leaf = flax_path(name, entry)
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = _to_flax(entry.kind, found.pop(name))  # Dropped once converted: one at a time.
  return params


def layout_tensors(layout: Layout, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """`layout_params`' exact inverse: the checkpoint tensors of a parameter tree."""
  tensors = {}
  for name, entry in layout.items():
    node: Any = params
    for part in flax_path(name, entry):
      node = node[part]
    tensors[name] = _to_torch(entry.kind, node)
  return tensors


@dataclasses.dataclass
class LayoutFormat:
  """A `TowerFormat` (`mmlearn.pretrained.formats`) defined by a layout built from the config.

  `prefixes` are the checkpoint names this tower owns (e.g. "vision_model.", "visual_projection."): only
  those tensors are checked and mapped, so the other tower and top-level `logit_scale` are left alone.
  Non-persistent `position_ids` buffers, which older `transformers` wrote into checkpoints, are skipped;
  `to_tensors` writes none, as `save_pretrained` does today.
  """

  model_types: tuple[str, ...]
  prefixes: tuple[str, ...]
  build: Callable[[Mapping[str, Any]], Layout]

  def owned(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
      name: value
      for name, value in tensors.items()
      if name.startswith(self.prefixes) and not name.endswith(".position_ids")
    }

  def to_params(self, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str) -> dict:
    return layout_params(self.build(config), self.owned(tensors), where)

  def to_tensors(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return layout_tensors(self.build(config), params)


def sub_config(config: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`config[key]` (e.g. "vision_config") over `transformers`' defaults, which older config.json files
  leave out (they were written as differences from the defaults); a null value also means the default."""
  given = config.get(key) or {}
  return dict(defaults) | {name: value for name, value in given.items() if value is not None}


def square(config: Mapping[str, Any], key: str, what: str) -> int:
  """An `image_size` or `patch_size`: an int, or a [n, n] pair; a `ConfigError` for a non-square one."""
  value = config[key]
  if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
    value = value[0]
  if not isinstance(value, int) or isinstance(value, bool):
    raise ConfigError(f"{what}: {key} {value!r} is not supported (only square sizes)")
  return value


@functools.lru_cache(maxsize=64)
def cached_config(checkpoint: str, model_type: str) -> Mapping[str, Any]:
  """The checkpoint's config.json, read once per path: a module rebuilds (and calls this) at every
  `init` and `apply`, and the architecture must not be re-read from disk each time. Do not mutate it."""
  return read_config(checkpoint, (model_type,))
