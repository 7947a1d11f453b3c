"""AV-MNIST, LeNet image + LeNet audio, `attention` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("attention", towers=towers)
