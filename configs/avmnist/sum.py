"""AV-MNIST, LeNet image + LeNet audio, `sum` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("sum", towers=towers)
