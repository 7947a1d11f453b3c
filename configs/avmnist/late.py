"""AV-MNIST, LeNet image + LeNet audio, `late` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("late", towers=towers)
