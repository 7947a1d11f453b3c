"""AV-MNIST reference setting (MultiBench): LeNet image (48-d) + LeNet audio (192-d) -> concat -> MLP.

MLP 240 -> 100 -> 10, SGD lr 0.1 (no momentum), weight decay 1e-4, batch 40, on the `noisy` build.
The fusion configs beside this file change only `model.fusion` (and its arguments).
"""

import ml_collections

from mmlearn import defaults

IMAGE = {"encoder": "lenet", "channels": 6, "num_layers": 3}  # 28x28x1 -> 48 features.
# 112x112x1 spectrogram -> 192 features; centred per example (see `LeNet.center_input`: without it the
# spectrogram's constant offset keeps SGD on the ln(10) plateau for a seed-dependent part of the epoch).
AUDIO = {"encoder": "lenet", "channels": 6, "num_layers": 5, "center_input": True}


def use_avmnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` reading the `noisy` AV-MNIST build through the LeNet towers, whatever its task.

  The missing-modality rates are keyed by these modalities (the default's are image and text).
  """
  config.dataset.name = "avmnist"
  config.dataset.config = "noisy"
  config.model.modalities = ml_collections.ConfigDict({"image": IMAGE, "audio": AUDIO})
  config.missing.train_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
  config.missing.test_rates = ml_collections.ConfigDict({"image": 0.0, "audio": 0.0})
  return config


def get_config(fusion: str = "concat", **fusion_kwargs) -> ml_collections.ConfigDict:
  config = use_avmnist(defaults.get_config())
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
  return config
