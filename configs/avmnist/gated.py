"""AV-MNIST, LeNet image + LeNet audio, `gated` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("gated", towers=towers)
