"""AV-MNIST, LeNet image + LeNet audio, `low_rank_tensor` fusion."""

from configs.avmnist import base


def get_config(towers: str = "reference"):
  return base.get_config("low_rank_tensor", towers=towers)
