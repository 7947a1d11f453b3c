"""AV-MNIST, image LeNet alone (48-d -> MLP)."""

from configs.avmnist import base


def get_config():
  config = base.get_config()
  del config.model.modalities["audio"]
  return config
