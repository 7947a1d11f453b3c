"""The default classifier, image modality alone: at best 62.5% on mmshapes (grayscale hides colour)."""

from configs import default


def get_config():
  config = default.get_config()
  del config.model.modalities["text"]
  return config
