"""AV-MNIST, audio LeNet alone (192-d -> MLP): the reference the noise SNR is calibrated against."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  config = base.get_config(towers=towers)
  del config.model.modalities["image"]
  return config
