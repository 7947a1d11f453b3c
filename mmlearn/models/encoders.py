"""Per-modality encoders: one input array (plus an optional mask) -> one feature vector per example.

Every encoder has the same signature, `__call__(x, mask=None, *, train=False) -> [B, D]`, so the
classifier builds and calls them uniformly from a config (`{"encoder": "lstm", "hidden": 64}`).
Encoders that have no notion of padding (images) accept and ignore `mask`; `train` switches dropout on
and BatchNorm to batch statistics, so adding either never changes a caller.

Precision: every encoder takes `dtype`, the computation dtype (a jnp dtype or a name, "bfloat16"); its
parameters stay float32 (`param_dtype`) and its output features are float32, so what reads them (a
fusion, a projection, a loss) chooses its own precision. An LSTM's carry stays float32 too: only its
matrix products run in `dtype`, so rounding does not accumulate over the steps.

Regularisers, both off by default so existing configs and checkpoints keep their parameter trees:
  - `dropout` (cnn, lenet, lstm, spectrogram_lstm): on the output features, when `train=True` and the
    rate is > 0; it then needs a 'dropout' RNG stream (`model.apply(..., rngs={"dropout": key})`).
  - `batch_norm` (cnn, lenet): conv (no bias) -> BatchNorm -> relu -> pool in every block, as MultiBench's
    LeNet. Statistics live in the `batch_stats` collection: training applies the model with
    `mutable=["batch_stats"]`, evaluation (`train=False`) uses the running averages. PyTorch's defaults:
    momentum 0.1 (Flax's 0.9 keeps 90% of the old average), epsilon 1e-5. Batch statistics are averaged
    over the devices of `batch_norm_axis` (`mmlearn.parallel.AXIS` by default), so inside the trainer's
    mapped step they are the global batch's, exactly as on one device; a caller that trains the model
    outside a mapped step sets `batch_norm_axis=None`. (The running variance is updated with the biased
    batch variance, where PyTorch uses the unbiased one: a factor n / (n - 1), under 0.1% at 28x28.)
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.parallel import AXIS
from mmlearn.registry import Registry

ENCODERS = Registry("encoder")
BN_MOMENTUM = 0.9  # Flax's decay of the running average: PyTorch's momentum 0.1.
BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default.


def computation_dtype(dtype: DTypeLike, what: str) -> jnp.dtype:
  """`dtype` (a name such as "bfloat16" or a jnp dtype) as a floating jnp dtype; a `ConfigError` otherwise."""
  try:
    resolved = jnp.dtype(dtype)
  except TypeError as error:
    raise ConfigError(f"{what}: dtype {dtype!r} is not a dtype") from error
  if not jnp.issubdtype(resolved, jnp.floating):
    raise ConfigError(f"{what}: dtype must be a floating dtype, got {dtype!r}")
  return resolved


def check_rate(rate: float, key: str, what: str) -> None:
  """A `ConfigError` naming the key for a dropout rate outside [0, 1)."""
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f"{what}: {key} must be in [0, 1), got {rate}")


def dropout(module: nn.Module, x: jnp.ndarray, rate: float, train: bool, what: str) -> jnp.ndarray:
  """Dropout at `rate` when training; the identity otherwise (and then no RNG is drawn).

  Raises a `ConfigError` instead of Flax's missing-RNG error when the caller passes no 'dropout' stream.
  """
  if not train or rate == 0.0:
    return x
  if not module.has_rng("dropout"):
    raise ConfigError(
      f"{what}: dropout {rate} needs a 'dropout' RNG stream when training, and the caller passes none; "
      "set it to 0.0"
    )
  return nn.Dropout(rate, deterministic=False)(x)


def output_dropout(module: nn.Module, x: jnp.ndarray, train: bool, what: str) -> jnp.ndarray:
  """`module.dropout` on an encoder's float32 output features (see `dropout`)."""
  check_rate(module.dropout, "dropout", what)
  return dropout(module, x, module.dropout, train, what)


def batch_norm(module: nn.Module, dtype: jnp.dtype, name: str) -> nn.BatchNorm:
  """A BatchNorm with PyTorch's defaults, float32 statistics, averaged over `module.batch_norm_axis`."""
  return nn.BatchNorm(
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    axis_name=module.batch_norm_axis,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 max-pool, stride 2, over [B, H, W, C] (an odd last row/column is dropped, as `nn.max_pool`).

  Same values and same gradients as `nn.max_pool(x, (2, 2), (2, 2))`, ties included (the gradient goes to
  the first maximum in row-major window order), but built from strided slices and `where`, whose
  gradient is elementwise. `nn.max_pool`'s gradient is XLA's select-and-scatter, slow on CPU (timings in
  docs/benchmark.md).
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  out = x[:, :, 0, :, 0]
  for i, j in ((0, 1), (1, 0), (1, 1)):
    window = x[:, :, i, :, j]
    out = jnp.where(window > out, window, out)  # Strict: a tie keeps the earlier element.
  return out


class PatchConv(nn.Module):
  """A stride-1 2-D convolution computed as patches @ kernel: the same parameters as `nn.Conv`.

  The `kh * kw` shifted slices of the (padded) input are concatenated into patches [B, H', W', kh*kw*Cin]
  and contracted with the kernel reshaped to [kh*kw*Cin, features]. Forward and gradients are then
  slices, pads and plain matrix products instead of XLA's convolution and its kernel gradient, which
  is slow on CPU for some shapes (docs/benchmark.md). Building the patches costs memory
  traffic, so whether it pays depends on the shapes: measure (`scripts/benchmark.py`). Parameters are
  `kernel` [kh, kw, Cin, features] and `bias` [features], named and initialised as `nn.Conv`'s, so the
  two are interchangeable on one checkpoint.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    padding: "SAME" (output H x W, `nn.Conv`'s padding split) or "VALID" (output (H-kh+1) x (W-kw+1)).
    use_bias: add a `bias` (False before a BatchNorm, whose shift replaces it).
    dtype: computation dtype; the parameters are float32.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  padding: str = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = self.kernel_size
    dtype = computation_dtype(self.dtype, "PatchConv")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    x = x.astype(dtype)
    if self.padding == "SAME":  # As lax's SAME at stride 1: the odd pixel of an even kernel goes after.
      x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    elif self.padding != "VALID":
      raise ConfigError(f"PatchConv padding must be 'SAME' or 'VALID', got {self.padding!r}")
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    # Patch channel order (i, j, c) is the row-major order of the kernel's leading axes.
    patches = jnp.concatenate([x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1)
    out = patches @ kernel.reshape(-1, self.features).astype(dtype)
    if self.use_bias:
      out = out + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(dtype)
    return out


CONV_IMPLS = ("xla", "patches")
_LECUN_INIT = nn.initializers.lecun_normal()  # `nn.Conv`'s default.


def conv_block(
  module: nn.Module,
  x: jnp.ndarray,
  features: int,
  kernel_size: tuple[int, int],
  *,
  index: int,
  train: bool,
  dtype: jnp.dtype,
  conv: str = "xla",
  padding: str = "SAME",
  kernel_init: Callable = _LECUN_INIT,
) -> jnp.ndarray:
  """conv -> relu, or conv (no bias) -> BatchNorm -> relu with `module.batch_norm`; no pooling.

  The layers are named `conv{index}` and `bn{index}`, so a model without BatchNorm keeps its parameters.
  """
  use_bias = not module.batch_norm
  if conv == "patches":
    layer = PatchConv(features, kernel_size, padding, use_bias, kernel_init, dtype=dtype, name=f"conv{index}")
  else:
    layer = nn.Conv(
      features,
      kernel_size,
      padding=padding,
      use_bias=use_bias,
      kernel_init=kernel_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=f"conv{index}",
    )
  x = layer(x)
  if module.batch_norm:
    x = batch_norm(module, dtype, f"bn{index}")(x, use_running_average=not train)
  return nn.relu(x)


@ENCODERS.register("cnn")
class ImageCNN(nn.Module):
  """A small LeNet-style CNN: (3x3 conv -> relu -> 2x2 max-pool) per width, then flatten -> dense -> relu.

  Kept shallow on purpose: models here train on CPUs. The pooling is `max_pool_2x2` (same values and
  gradients as `nn.max_pool`, faster to differentiate on CPU).

  Attributes:
    widths: output channels of each conv block; each block halves the spatial resolution.
    dense: number of output features.
    conv: "xla" (`nn.Conv`, the default) or "patches" (`PatchConv`: gradients are matrix products); the
      same parameters and function. Which is faster depends on the shapes (docs/benchmark.md).
    padding: "SAME" or "VALID" convolutions.
    pool: max-pool after each conv; False keeps the full resolution (a Keras-style conv -> flatten).
    batch_norm: conv (no bias) -> BatchNorm -> relu in each block (see the module docstring).
    batch_norm_axis: the mapped axis BatchNorm averages statistics over; None outside a mapped step.
    dropout: dropout rate on the output features when training.
    dtype: computation dtype; parameters and the output features are float32.
  """

  widths: Sequence[int] = (32, 64)
  dense: int = 64
  conv: str = "xla"
  padding: str = "SAME"
  pool: bool = True
  batch_norm: bool = False
  batch_norm_axis: str | None = AXIS
  dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes float images [B, H, W, C] into float32 features [B, dense]; `mask` is unused."""
    del mask
    if self.conv not in CONV_IMPLS:
      raise ConfigError(f"ImageCNN conv must be one of {', '.join(CONV_IMPLS)}, got {self.conv!r}")
    dtype = computation_dtype(self.dtype, "encoder 'cnn'")
    x = jnp.asarray(x, jnp.float32).astype(dtype)
    for i, width in enumerate(self.widths):
      if self.pool and min(x.shape[1:3]) < 2:
        raise ConfigError(
          f"ImageCNN with {len(self.widths)} pooling blocks: block {i} gets a {x.shape[1]}x"
          f"{x.shape[2]} feature map, too small to pool; use fewer widths"
        )
      x = conv_block(
        self, x, width, (3, 3), index=i, train=train, dtype=dtype, conv=self.conv, padding=self.padding
      )
      if self.pool:
        x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=dtype, param_dtype=jnp.float32, name="dense")(x))
    return output_dropout(self, x.astype(jnp.float32), train, "encoder 'cnn'")


def zero_lstm_carry(inputs: jnp.ndarray, hidden: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """An all-zero float32 LSTM carry (c, h), each [B, hidden], for inputs [B, L, E] of any dtype.

  Built with `zeros_like` so it inherits the inputs' device-varying axes: under
  `shard_map(check_vma=True)`, nn.RNN's default carry is a device-invariant constant while the carry
  the cell returns varies per device, and `lax.scan` rejects the mismatch. Float32 whatever the
  computation dtype: the cell's gates run in its dtype, but c and h are then updated in float32.
  """
  zeros = jnp.zeros_like(inputs[:, 0, :1], dtype=jnp.float32, shape=(inputs.shape[0], hidden))
  return zeros, zeros


def lstm_cell(hidden: int, dtype: jnp.dtype, name: str) -> nn.OptimizedLSTMCell:
  """An LSTM cell whose matrix products run in `dtype`, with float32 parameters."""
  return nn.OptimizedLSTMCell(hidden, dtype=dtype, param_dtype=jnp.float32, name=name)


@ENCODERS.register("lstm")
class TextLSTM(nn.Module):
  """Token embedding -> LSTM (optionally bidirectional); the sentence vector is the final hidden state.

  Sequences are right-padded; `mask` marks the real tokens (True) and must be a prefix of each row.
  The forward state is read at each sequence's last real token and the backward LSTM reads only the real
  tokens, in reverse, so padding -- how much of it, and which ids sit under it -- never changes the output.
  A sequence with no real tokens encodes to zeros rather than to whatever the LSTM made of the padding.

  Attributes:
    vocab_size: number of token ids (ids must lie in [0, vocab_size)).
    embed_dim: token embedding width.
    hidden: LSTM state width (per direction).
    bidirectional: also run a backward LSTM and concatenate its final state: [B, 2 * hidden].
    dense: if set, a dense layer + relu maps the recurrent state to this many features.
    dropout: dropout rate on the output features when training.
    dtype: computation dtype; parameters, the LSTM carry and the output features are float32.
  """

  vocab_size: int
  embed_dim: int = 64
  hidden: int = 64
  bidirectional: bool = False
  dense: int | None = None
  dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes int tokens [B, L] (with bool `mask` [B, L], None = no padding) into features [B, D]."""
    dtype = computation_dtype(self.dtype, "encoder 'lstm'")
    if mask is None:
      mask = jnp.ones(x.shape, bool)
    mask = mask.astype(bool)
    lengths = mask.sum(-1).astype(jnp.int32)
    # Pad ids are replaced by 0 so an arbitrary (even out-of-range) id under the padding cannot leak NaNs
    # from the embedding lookup into the gradient of the unused padding steps.
    tokens = jnp.where(mask, x, 0)
    embedded = nn.Embed(self.vocab_size, self.embed_dim, dtype=dtype, param_dtype=jnp.float32, name="embed")(
      tokens
    )

    carry = zero_lstm_carry(embedded, self.hidden)
    # The cells own the parameters (nn.RNN is a parameter-free scan around them), so they carry the names.
    forward = nn.RNN(lstm_cell(self.hidden, dtype, "forward_lstm"))
    if self.bidirectional:
      backward = nn.RNN(lstm_cell(self.hidden, dtype, "backward_lstm"))
      # With `seq_lengths`, the backward RNN reverses only the real prefix of each row (padding stays at
      # the end) and its carry is read at the last real step, i.e. after reading the first real token.
      (forward_carry, backward_carry), _ = nn.Bidirectional(forward, backward)(
        embedded, initial_carry=(carry, carry), seq_lengths=lengths, return_carry=True
      )
      state = jnp.concatenate([forward_carry[1], backward_carry[1]], axis=-1)  # LSTM carries are (c, h).
    else:
      forward_carry, _ = forward(embedded, initial_carry=carry, seq_lengths=lengths, return_carry=True)
      state = forward_carry[1]
    # An empty sequence would otherwise take the carry of the last (padding) step.
    state = jnp.where((lengths > 0)[:, None], state.astype(jnp.float32), 0.0)

    if self.dense is not None:
      state = nn.relu(nn.Dense(self.dense, dtype=dtype, param_dtype=jnp.float32, name="dense")(state))
    return output_dropout(self, state.astype(jnp.float32), train, "encoder 'lstm'")
