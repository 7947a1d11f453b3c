"""AV-MNIST reference setting (MultiBench): LeNet image (48-d) + LeNet audio (192-d) -> concat -> MLP.

MultiBench's `avmnist_simple_late_fusion` exactly: LeNet(1, 6, 3) on the image and LeNet(1, 6, 5) on the
spectrogram, each block conv (no bias) -> BatchNorm -> relu -> max-pool; MLP 240 -> 100 -> 10; SGD lr 0.1
(no momentum), weight decay 1e-4, batch 40, on the `noisy` build; the best epoch by validation accuracy
(`select_metric`, evaluated on validation every epoch). The fusion configs beside this file change only
`model.fusion` (and its arguments).

`towers="plain"` (e.g. `--config=configs/avmnist/concat.py:plain`) selects the BatchNorm-free LeNets that
mmlearn used before its trainer kept batch statistics: convs with biases, He initialisation, and the
spectrogram centred per example (see `LeNet`); the AV-MNIST MVAE, retrieval and flow configs, whose
tables were measured with them, still use them.
"""

import ml_collections
from ml_collections import config_dict

from mmlearn.config import schema as defaults

IMAGE = {"encoder": "lenet", "channels": 6, "num_layers": 3}  # 28x28x1 -> 48 features.
# 112x112x1 spectrogram -> 192 features; centred per example (see `LeNet.center_input`: without it the
# spectrogram's constant offset keeps SGD on the ln(10) plateau for a seed-dependent part of the epoch).
AUDIO = {"encoder": "lenet", "channels": 6, "num_layers": 5, "center_input": True}
TOWERS = {
  "reference": {
    "image": {**IMAGE, "batch_norm": True},
    "audio": {**AUDIO, "center_input": False, "batch_norm": True},
  },
  "plain": {"image": IMAGE, "audio": AUDIO},
}


def use_avmnist(config: ml_collections.ConfigDict, towers: str = "plain") -> ml_collections.ConfigDict:
  """`config` reading the `noisy` AV-MNIST build through the LeNet `towers` ("reference" or "plain").

  The missing-modality rates are keyed by these modalities (the default's are image and text).
  """
  if towers not in TOWERS:
    raise ValueError(f"AV-MNIST towers must be one of {sorted(TOWERS)}, got {towers!r}")
  config.dataset.name = "avmnist"
  config.dataset.config = "noisy"
  # None: the config's own level; a number prepares the build at that SNR (the calibration, docs/datasets.md).
  config.dataset.options = ml_collections.ConfigDict({"snr_db": config_dict.placeholder(float)})
  config.model.modalities = ml_collections.ConfigDict(TOWERS[towers])
  config.missing.train_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
  config.missing.test_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
  return config


def get_config(
  fusion: str = "concat", towers: str = "reference", **fusion_kwargs
) -> ml_collections.ConfigDict:
  config = use_avmnist(defaults.get_config(), towers)
  config.dataset.eval_splits = ("validation", "test")
  config.model.fusion = fusion
  config.model.fusion_kwargs = ml_collections.ConfigDict(fusion_kwargs)
  config.model.head_hidden = (100,)
  config.optimizer.update(
    name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=1e-4, warmup_steps=0, schedule="constant"
  )
  config.batch_size = 40
  config.eval_batch_size = 400
  config.num_epochs = 1.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 1375  # One epoch (55,000 / 40): runs of several epochs keep the best one.
  config.select_metric = "validation/accuracy"
  return config
