"""The AV-MNIST towers of MultiBench: the LeNet of both modalities and a spectrogram LSTM.

Registered beside the generic encoders (`mmlearn.models.encoders`), with the same signature and the same
`dropout` / `batch_norm` conventions (see that module's docstring).
"""

import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.encoders import (
  ENCODERS,
  computation_dtype,
  conv_block,
  lstm_cell,
  max_pool_2x2,
  output_dropout,
  zero_lstm_carry,
)
from mmlearn.parallel import AXIS

_HE_INIT = nn.initializers.he_normal()


@ENCODERS.register("lenet")
class LeNet(nn.Module):
  """The AV-MNIST LeNet of MultiBench (`unimodals/common_models.py`, after CentralNet).

  MultiBench uses LeNet(1, 6, 3) for the image (48 features) and LeNet(1, 6, 5) for the spectrogram (192),
  i.e. `channels=6` with `num_layers=3` / `num_layers=5` here. Blocks: a 5x5 conv with `channels` outputs,
  then `num_layers` 3x3 convs, each doubling the channels; every conv ('SAME' padding, as the reference's
  padding 2 / 1) is followed by relu and a 2x2 max-pool (floor, as PyTorch; `max_pool_2x2`). Output width
  `channels * 2 ** num_layers`. On 28x28 with 4 pools (28-14-7-3-1) and 112x112 with 6 pools
  (112-...-7-3-1) the map ends at 1x1, where flattening is exactly the reference's output; a final global
  max-pool gives the same width for any other input size.

  `batch_norm=True` is exactly the reference's block: conv without bias -> BatchNorm -> relu -> max-pool
  (statistics averaged over the devices, PyTorch's momentum and epsilon; see the module docstring).
  `batch_norm=False` is the plain block, with conv biases. Then nothing restores the activation scale,
  so the kernels start with He (fan-in, relu) initialisation: with Flax's default LeCun init each relu
  layer shrinks the signal, and the six-block audio LeNet then stays on the ln(10) loss plateau
  (docs/datasets.md, "AV-MNIST noise calibration"). He init is kept with BatchNorm, where the scale no
  longer matters.

  `center_input` subtracts each example's mean before the first conv. The noisy AV-MNIST spectrogram is
  mostly a constant offset; uncentred, that offset dominates every first-layer response, all examples
  start with nearly parallel features, and SGD sits on the ln(10) plateau for a seed-dependent part of
  the epoch. Centring, not standardising: dividing by each example's std as well inflates the input
  scale, and at the reference's SGD lr 0.1 that diverged (measurements: docs/datasets.md, "AV-MNIST
  noise calibration"). BatchNorm after the first conv removes the offset, so the reference
  (`batch_norm=True`, configs/avmnist/base.py) does not centre.

  Attributes:
    channels: output channels of the first conv.
    num_layers: further conv blocks after the first (the reference's `additional_layers`).
    center_input: subtract each example's mean over all its values first (in float32).
    batch_norm: the reference's conv (no bias) -> BatchNorm -> relu -> pool blocks.
    batch_norm_axis: the mapped axis BatchNorm averages statistics over; None outside a mapped step.
    dropout: dropout rate on the output features when training.
    dtype: computation dtype; parameters and the output features are float32.
  """

  batch_norm: bool  # Required: MultiBench's block, or the plain one (no default to fall back to silently).
  channels: int = 6
  num_layers: int = 3
  center_input: bool = False
  batch_norm_axis: str | None = AXIS
  dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes float arrays [B, H, W, C] into [B, channels * 2 ** num_layers] float32; `mask` is unused."""
    del mask
    dtype = computation_dtype(self.dtype, "encoder 'lenet'")
    x = jnp.asarray(x, jnp.float32)
    if self.center_input:
      x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x.astype(dtype)
    for i in range(self.num_layers + 1):
      if min(x.shape[1:3]) < 2:
        raise ConfigError(
          f"LeNet with {self.num_layers + 1} pooling blocks: block {i} gets a {x.shape[1]}x{x.shape[2]} "
          "feature map, too small to pool; use fewer num_layers"
        )
      kernel = (5, 5) if i == 0 else (3, 3)
      x = conv_block(
        self, x, self.channels * 2**i, kernel, index=i, train=train, dtype=dtype, kernel_init=_HE_INIT
      )
      x = max_pool_2x2(x)
    return output_dropout(self, x.max(axis=(1, 2)).astype(jnp.float32), train, "encoder 'lenet'")


@ENCODERS.register("spectrogram_lstm")
class SpectrogramLSTM(nn.Module):
  """An LSTM over a spectrogram's time frames; the features are the final hidden state.

  Input [B, F, T, 1] (frequency x time, as the `avmnist` audio): step t reads the F values of frame t.
  Spectrograms have no padding, so every sequence runs its full length and `mask` is ignored.

  Attributes:
    hidden: LSTM state width (the output width).
    project: if set, a dense layer + relu maps each frame to this many features before the LSTM.
    dropout: dropout rate on the output features when training.
    dtype: computation dtype; parameters, the LSTM carry and the output features are float32.
  """

  hidden: int = 64
  project: int | None = None
  dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False) -> jnp.ndarray:
    """Encodes float spectrograms [B, F, T, C] into float32 features [B, hidden]; `mask` is unused."""
    del mask
    dtype = computation_dtype(self.dtype, "encoder 'spectrogram_lstm'")
    x = jnp.asarray(x, jnp.float32).astype(dtype)
    frames = jnp.moveaxis(x, 2, 1).reshape(x.shape[0], x.shape[2], -1)  # [B, T, F * C]
    if self.project is not None:
      frames = nn.relu(nn.Dense(self.project, dtype=dtype, param_dtype=jnp.float32, name="project")(frames))
    rnn = nn.RNN(lstm_cell(self.hidden, dtype, "lstm"))
    carry, _ = rnn(frames, initial_carry=zero_lstm_carry(frames, self.hidden), return_carry=True)
    state = carry[1].astype(jnp.float32)  # LSTM carries are (c, h).
    return output_dropout(self, state, train, "encoder 'spectrogram_lstm'")
