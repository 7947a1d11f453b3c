"""Per-modality decoders of generative models: a latent z [B, D] -> p(x | z), by name (`DECODERS`).

Every decoder owns its likelihood, so a generative task treats all modalities alike:
  - `log_likelihood(z, x, mask=None) -> [B]`: log p(x | z) of each example in nats, summed over its
    elements (pixels, or real tokens plus the end of the sequence);
  - `generate(z, rng, temperature) -> (x, mask)`: one sample per row of z in the pipeline's input format
    (`mask` is the token mask of a sequence, None for arrays). `rng` is one key, or one key per row of z
    (`mmlearn.rngs`), so that a row's sample depends on its own key only.

Likelihoods are probabilities of the data as stored, never densities, so log p(x | z) <= 0 and an ELBO is
a bound on a log-probability: comparable across models, and a loss (-ELBO) is never negative.
  - `deconv` (images, spectrograms): the pipeline's arrays are uint8 levels scaled to [-1, 1], so p(x | z)
    is a Gaussian discretized to those 256 levels (the end levels take the tails), with a mean from a
    tanh and one standard deviation per modality (fixed, or learned as in sigma-VAE, Rybkin et al. 2021).
    A plain Gaussian density would reward shrinking the deviation without bound on the flat background.
  - `lstm` (token sequences): categorical over the vocabulary at every real token and at the first
    padding position, which teaches where a caption ends (id 0, `<pad>`, doubles as end-of-sequence).

Every decoder takes `dtype`, the computation dtype of its layers; parameters stay float32, and the
distribution's parameters (the mean and deviation, the logits) come back as float32, so likelihoods,
the ELBO and samples are computed in float32. The LSTM's carry stays float32, as the encoders'.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import log_ndtr
from jax.typing import DTypeLike

from mmlearn import rngs
from mmlearn.errors import ConfigError
from mmlearn.models.encoders import computation_dtype
from mmlearn.registry import Registry

DECODERS = Registry("decoder")
LEVELS = 256  # uint8 levels of the pipeline's arrays, scaled to [-1, 1]: 2 / 255 apart.
PAD_ID = 0  # The tokenizer's padding id: the decoders' start token and end-of-sequence.


def discretized_gaussian_log_likelihood(
  x: jax.Array, mean: jax.Array, log_std: jax.Array, *, levels: int = LEVELS
) -> jax.Array:
  """Elementwise log P(x) of levels in [-1, 1] (`levels` of them, evenly spaced) under N(mean, std^2).

  A level owns the interval half a step either side; the end levels own the tails. Computed from
  log-CDFs on the side of the mean where both stay accurate, so the log-probability of a level far from
  the mean stays finite, and so does its gradient (no clamping that would stop learning at the start).
  """
  half = 1.0 / (levels - 1)
  inv_std = jnp.exp(-log_std)
  centred = x - mean
  upper, lower = (centred + half) * inv_std, (centred - half) * inv_std
  # P = Phi(upper) - Phi(lower) = Phi(-lower) - Phi(-upper): take the form whose CDFs are both small.
  right = centred > 0
  big, small = jnp.where(right, -lower, upper), jnp.where(right, -upper, lower)
  log_big = log_ndtr(big)
  middle = log_big + jnp.log1p(-jnp.exp(log_ndtr(small) - log_big))
  return jnp.where(x < -1.0 + half, log_ndtr(upper), jnp.where(x > 1.0 - half, log_ndtr(-lower), middle))


def translate(images: jax.Array, shift: jax.Array) -> jax.Array:
  """`images` [B, H, W, C] moved by `shift` [B, 2] = (dx, dy) pixels, bilinearly (sub-pixel, differentiable).

  Output pixel (y, x) reads the input at (y - dy, x - dx), clamped to the canvas (edge pixels extend, as
  a uniform background would). Separable: one [B, H, H] and one [B, W, W] interpolation matrix.
  """

  def weights(size: int, offset: jax.Array) -> jax.Array:  # [B, size out, size in]
    source = jnp.clip(jnp.arange(size, dtype=images.dtype)[None, :] - offset[:, None], 0, size - 1)
    return nn.relu(1.0 - jnp.abs(source[..., None] - jnp.arange(size, dtype=images.dtype)))

  _, height, width, _ = images.shape
  return jnp.einsum("byh,bhwc,bxw->byxc", weights(height, shift[:, 1]), images, weights(width, shift[:, 0]))


@DECODERS.register("deconv")
class DeconvDecoder(nn.Module):
  """z -> dense -> [H/2^n, W/2^n, widths[0]] -> n stride-2 transposed convs -> tanh mean [H, W, C].

  Attributes:
    shape: (H, W, C) of the arrays decoded; H and W must be divisible by 2 ** len(widths).
    widths: channels of the starting map, then of each upsampling but the last (which outputs C).
    std: the likelihood's standard deviation in [-1, 1] units (its initial value when learned).
    learn_std: learn one log standard deviation for the modality (parameter `log_std`).
    translate: the last two entries of z are not features but w, the modality's private latent
      (`mvae.private_dims` = 2) as a position, which cannot carry the content (Spatial-VAE, Bepler et
      al. 2019), so the content must come from the shared z. The decoded mean is moved by
      `max_shift * tanh(w * scale / max_shift)` pixels, with a learned scale per axis
      (`shift_log_scale`, initially 2 pixels per unit): bounded, so that the shared z must still give
      the rough position and the prior's draws reach every shift the posteriors use (unbounded, w moved
      shapes far beyond the prior's draws: docs/generation.md, the MVAE's design choices).
    max_shift: the bound of the translation, in pixels, on each axis.
    dtype: computation dtype of the dense and transposed-conv layers; the mean is returned as float32.
  """

  shape: Sequence[int]
  widths: Sequence[int] = (64, 32)
  std: float = 0.1
  learn_std: bool = False
  translate: bool = False
  max_shift: float = 4.0
  dtype: DTypeLike = jnp.float32

  def setup(self):
    height, width, channels = self.shape
    scale = 2 ** len(self.widths)
    if not self.widths or height % scale or width % scale:
      raise ConfigError(
        f"deconv decoder: {height}x{width} outputs are not divisible by 2 ** {len(self.widths)} "
        f"(one doubling per width in {tuple(self.widths)})"
      )
    if self.std <= 0:
      raise ConfigError(f"deconv decoder: std must be positive, got {self.std}")
    self.start = (height // scale, width // scale, self.widths[0])
    dtype = computation_dtype(self.dtype, "deconv decoder")
    self.project = nn.Dense(math.prod(self.start), dtype=dtype, param_dtype=jnp.float32)
    self.upsample = [
      nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", dtype=dtype, param_dtype=jnp.float32)
      for features in (*self.widths[1:], channels)
    ]
    initial = math.log(self.std)
    self.log_std = self.param("log_std", nn.initializers.constant(initial), ()) if self.learn_std else initial
    if self.translate:
      self.shift_log_scale = self.param("shift_log_scale", nn.initializers.constant(math.log(2.0)), (2,))

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean [B, H, W, C] in [-1, 1], log standard deviation, a scalar)."""
    features = z[:, :-2] if self.translate else z
    x = nn.relu(self.project(features)).reshape(z.shape[0], *self.start)
    for i, layer in enumerate(self.upsample):
      x = layer(x)
      if i < len(self.upsample) - 1:
        x = nn.relu(x)
    mean = jnp.tanh(x).astype(jnp.float32)
    if self.translate:
      shift = self.max_shift * jnp.tanh(z[:, -2:] * jnp.exp(self.shift_log_scale) / self.max_shift)
      mean = translate(mean, shift)
    return mean, jnp.asarray(self.log_std, jnp.float32)

  def log_likelihood(self, z: jax.Array, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    del mask  # Arrays have no padding.
    mean, log_std = self(z)
    return discretized_gaussian_log_likelihood(x, mean, log_std).reshape(x.shape[0], -1).sum(-1)

  def generate(self, z: jax.Array, rng: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, None]:
    """The mean: per-pixel noise would add only what the model knows it cannot predict."""
    del rng, temperature
    return self(z)[0], None


class TokenStep(nn.Module):
  """One step of the token decoder: (carry, previous tokens [B], z) -> (carry, logits [B, vocab_size])."""

  vocab_size: int
  embed_dim: int
  hidden: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, carry, previous: jax.Array, z: jax.Array):
    embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32, name="embed")
    inputs = jnp.concatenate([embed(previous), z.astype(self.dtype)], axis=-1)
    carry, out = nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, param_dtype=jnp.float32, name="cell")(
      carry, inputs
    )
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, name="readout")(out)
    return carry, logits.astype(jnp.float32)


# The step scanned over a sequence's positions [B, T] (z broadcast), one set of parameters for every step.
# Generation calls it on length-1 sequences, so teacher forcing and sampling share one code path.
ScannedTokenSteps = nn.scan(
  TokenStep,
  variable_broadcast="params",
  split_rngs={"params": False},
  in_axes=(1, nn.broadcast),  # pyright: ignore[reportArgumentType] (flax: unannotated, inferred int)
  out_axes=1,
)


@DECODERS.register("lstm")
class LSTMDecoder(nn.Module):
  """An LSTM language model conditioned on z: z sets the initial state and is fed at every step.

  Step t reads the previous token (the start token `<pad>` at t = 0). Training is teacher-forced (one
  scan over the positions); `generate` samples token by token at a temperature (0: greedy) and stops a
  row at its first `<pad>`.

  Attributes:
    vocab_size: number of token ids.
    max_tokens: length of generated sequences (the pipeline's `max_tokens`).
    embed_dim: token embedding width.
    hidden: LSTM state width.
    dtype: computation dtype of the layers; the carry and the logits are float32.
  """

  vocab_size: int
  max_tokens: int
  embed_dim: int = 32
  hidden: int = 64
  dtype: DTypeLike = jnp.float32

  def setup(self):
    dtype = computation_dtype(self.dtype, "lstm decoder")
    self.initial_state = nn.Dense(2 * self.hidden, dtype=dtype, param_dtype=jnp.float32)
    self.steps = ScannedTokenSteps(self.vocab_size, self.embed_dim, self.hidden, dtype)

  def _start(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    c, h = jnp.split(jnp.tanh(self.initial_state(z)).astype(jnp.float32), 2, axis=-1)
    return c, h

  def __call__(self, z: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, T, vocab_size] of int tokens [B, T] (padding read as `<pad>`)."""
    if mask is not None:
      tokens = jnp.where(mask, tokens, PAD_ID)
    previous = jnp.concatenate([jnp.full_like(tokens[:, :1], PAD_ID), tokens[:, :-1]], axis=1)
    _, logits = self.steps(self._start(z), previous, z)
    return logits

  def log_likelihood(self, z: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sum of log p(token) over the real tokens and the end of the sequence (if it fits)."""
    if mask is None:
      mask = jnp.ones(tokens.shape, bool)
    mask = mask.astype(bool)
    logits = self(z, tokens, mask)
    positions = jnp.arange(tokens.shape[1])
    scored = mask | (positions == mask.sum(-1, keepdims=True))  # The first padding position: the end.
    targets = jnp.where(mask, tokens, PAD_ID)
    log_p = -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.where(scored, log_p, 0.0).sum(-1)

  def generate(self, z: jax.Array, rng: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, max_tokens] int32, mask [B, max_tokens] bool); temperature 0 decodes greedily.

    `rng`: one key, or one per row of z (row i's tokens drawn from key i alone).
    """
    carry = self._start(z)
    token = jnp.full((z.shape[0],), PAD_ID, jnp.int32)
    alive = jnp.ones((z.shape[0],), bool)
    tokens = []
    for t in range(self.max_tokens):
      carry, logits = self.steps(carry, token[:, None], z)
      logits = logits[:, 0]
      sampled = rngs.categorical(rngs.fold_in(rng, t), logits / jnp.maximum(temperature, 1e-6))
      token = jnp.where(temperature > 0, sampled, logits.argmax(-1)).astype(jnp.int32)
      token = jnp.where(alive, token, PAD_ID)
      alive = alive & (token != PAD_ID)
      tokens.append(token)
    tokens = jnp.stack(tokens, axis=1)
    return tokens, tokens != PAD_ID  # Everything after the first <pad> is <pad>: the mask is a prefix.
