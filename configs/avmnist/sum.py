"""AV-MNIST, LeNet image + LeNet audio, `sum` fusion."""

from configs.avmnist import base


def get_config():
  return base.get_config("sum")
