"""The AV-MNIST encoders: MultiBench's LeNet widths, the spectrogram LSTM's shape, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmlearn.errors import ConfigError
from mmlearn.models.avmnist_encoders import LeNet, SpectrogramLSTM
from mmlearn.models.classifier import Classifier
from mmlearn.models.encoders import ENCODERS


def init_apply(module, x):
  """Jitted: one compilation of the module is faster than compiling each of its ops for an eager call."""
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  return params, jax.jit(module.apply)(params, x)


def finite_nonzero_gradients(module, params, x) -> bool:
  grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  return all(bool(jnp.isfinite(g).all()) for g in leaves) and sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize(
  ("shape", "num_layers", "width"),
  [((28, 28, 1), 3, 48), ((112, 112, 1), 5, 192), ((40, 30, 1), 3, 48)],  # The last: any size, same width.
)
def test_lenet_output_width_matches_multibench(shape, num_layers, width):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, *shape))
  module = LeNet(channels=6, num_layers=num_layers, batch_norm=False)
  params, y = init_apply(module, x)
  assert y.shape == (2, width)
  kernels = [params["params"][f"conv{i}"]["kernel"].shape for i in range(num_layers + 1)]
  assert kernels[0] == (5, 5, 1, 6)
  assert all(k[:2] == (3, 3) and k[3] == 6 * 2**i for i, k in enumerate(kernels) if i)
  if shape[0] != 40:
    assert finite_nonzero_gradients(module, params, x)


def test_lenet_rejects_inputs_too_small_to_pool():
  with pytest.raises(ConfigError, match="too small to pool"):
    init_apply(LeNet(num_layers=5, batch_norm=False), jnp.zeros((1, 28, 28, 1)))


def test_spectrogram_lstm_reads_time_frames():
  module = SpectrogramLSTM(hidden=16, project=8)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 112, 20, 1))  # 112 frequency bins, 20 frames.
  params, y = init_apply(module, x)
  assert y.shape == (3, 16)
  assert params["params"]["project"]["kernel"].shape == (112, 8)  # Each step sees one frame's 112 bins.
  # The last frame changes the final state; a different example's input does not.
  y2 = module.apply(params, x.at[0, :, -1].add(1.0))
  assert not np.allclose(y[0], y2[0])
  np.testing.assert_allclose(y[1:], y2[1:], rtol=1e-6)
  assert finite_nonzero_gradients(module, params, x)


def test_registered_and_usable_from_a_classifier_config():
  assert ENCODERS.get("lenet") is LeNet and ENCODERS.get("spectrogram_lstm") is SpectrogramLSTM
  model = Classifier(
    modalities={
      "image": {"encoder": "lenet", "batch_norm": False},
      "audio": {"encoder": "spectrogram_lstm", "hidden": 8},
    },
    fusion="concat",
    head_hidden=(16,),
    num_classes=10,
  )
  batch = {"image": jnp.zeros((2, 28, 28, 1)), "audio": jnp.zeros((2, 112, 112, 1))}
  params = model.init(jax.random.PRNGKey(0), batch)
  assert model.apply(params, batch).shape == (2, 10)


def test_lenet_names_its_block_explicitly():
  """No default block: a config must say MultiBench's (BatchNorm) or the plain one."""
  with pytest.raises(ConfigError, match="missing required argument.*'batch_norm'"):
    Classifier(modalities={"image": {"encoder": "lenet"}}, num_classes=10).init(
      jax.random.PRNGKey(0), {"image": jnp.zeros((1, 28, 28, 1))}
    )
