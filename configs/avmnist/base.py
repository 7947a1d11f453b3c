"""The AV-MNIST dataset and MultiBench's LeNet towers, for the configs of every task on AV-MNIST.

`towers="reference"`: MultiBench's `avmnist_simple_late_fusion` towers exactly, LeNet(1, 6, 3) on the
image (48 features) and LeNet(1, 6, 5) on the spectrogram (192 features), each block conv (no bias) ->
BatchNorm -> relu -> max-pool. `towers="plain"`: the BatchNorm-free LeNets (convs with biases, He
initialisation, the spectrogram centred per example; see `LeNet`), which the AV-MNIST MVAE, retrieval,
flow and missing-modality configs use, as their tables were measured with them.

No `get_config` here, so nothing to launch: the classifier is `configs/avmnist/fusion.py`, and the
MVAE, flow, retrieval and sweep configs on AV-MNIST call `use_avmnist`.
"""

import ml_collections
from ml_collections import config_dict

IMAGE = {"encoder": "lenet", "channels": 6, "num_layers": 3}  # 28x28x1 -> 48 features.
# 112x112x1 spectrogram -> 192 features; centred per example (see `LeNet.center_input`: without it the
# spectrogram's constant offset keeps SGD on the ln(10) plateau for a seed-dependent part of the epoch).
AUDIO = {"encoder": "lenet", "channels": 6, "num_layers": 5, "center_input": True}
TOWERS = {
  "reference": {
    "image": {**IMAGE, "batch_norm": True},
    "audio": {**AUDIO, "center_input": False, "batch_norm": True},
  },
  "plain": {"image": {**IMAGE, "batch_norm": False}, "audio": {**AUDIO, "batch_norm": False}},
}


def use_avmnist(config: ml_collections.ConfigDict, towers: str = "plain") -> ml_collections.ConfigDict:
  """`config` reading the `noisy` AV-MNIST build through the LeNet `towers` ("reference" or "plain").

  A classification config's missing-modality rates are keyed by these modalities.
  """
  if towers not in TOWERS:
    raise ValueError(f"AV-MNIST towers must be one of {sorted(TOWERS)}, got {towers!r}")
  config.dataset.name = "avmnist"
  config.dataset.config = "noisy"
  # None: the config's own level; a number prepares the build at that SNR (the calibration, docs/datasets.md).
  config.dataset.options = ml_collections.ConfigDict({"snr_db": config_dict.placeholder(float)})
  config.model.modalities = ml_collections.ConfigDict(TOWERS[towers])
  if "missing" in config:
    config.missing.train_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
    config.missing.test_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
  return config
