"""AV-MNIST, LeNet image + LeNet audio, `multiplicative` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("multiplicative", towers=towers)
