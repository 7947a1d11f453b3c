"""AV-MNIST, LeNet image + LeNet audio, `tensor` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("tensor", towers=towers)
