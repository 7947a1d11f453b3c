"""The Keras reference's architecture (`../shared/peers/keras_seed.py`) in mmlearn, for the benchmark.

Image: Conv(32, 3x3, VALID) -> relu -> flatten (30x30x32) -> dense 64 -> relu, no pooling. Text: embedding 64
-> LSTM 64 -> dense 64 -> relu. Concat -> linear softmax head, Adam (lr 1e-3, constant), batch 32. What
differs: the Keras LSTM uses relu where this one uses tanh, and its vocabulary is 64 ids, mmshapes' own.
"""

from mmlearn.config import schema as defaults


def get_config():
  config = defaults.get_config()
  config.model.modalities.image = {
    "encoder": "cnn",
    "widths": (32,),
    "dense": 64,
    "padding": "VALID",
    "pool": False,
    "conv": "patches",  # Measured on the 2-core CPU: 0-10% faster than "xla" at batch 32, ~10% at 256.
  }
  config.model.modalities.text = {"encoder": "lstm", "embed_dim": 64, "hidden": 64, "dense": 64}
  config.model.head_hidden = ()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 0
  config.optimizer.schedule = "constant"
  config.batch_size = 32
  # Batches above 64 examples are trained in chunks of 64 (`microbatch_size`, the same update): the dense
  # layer's 28,800-wide input then stays in cache. No effect at batch 32. Measured in docs/benchmark.md.
  config.microbatch_size = 64
  return config
