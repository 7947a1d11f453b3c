"""AV-MNIST, image LeNet alone (48-d -> MLP)."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  config = base.get_config(towers=towers)
  del config.model.modalities["audio"]
  return config
