"""AV-MNIST, LeNet image + LeNet audio, `tensor` fusion."""

from configs.avmnist import base


def get_config():
  return base.get_config("tensor")
