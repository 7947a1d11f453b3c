"""AV-MNIST, LeNet image + LeNet audio, `concat` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("concat", towers=towers)
