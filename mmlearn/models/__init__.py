from mmlearn.models import (
  avmnist_encoders,  # noqa: F401  (registers "lenet" and "spectrogram_lstm")
  transformer,  # noqa: F401  (registers the "vit" and "transformer" encoders)
)
