"""AV-MNIST, audio LeNet alone (192-d -> MLP): the reference the noise SNR is calibrated against."""

from configs.avmnist import base


def get_config():
  config = base.get_config()
  del config.model.modalities["image"]
  return config
