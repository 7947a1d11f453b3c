"""The Keras reference's architecture (`../shared/peers/keras_seed.py`) in mmlearn, for the benchmark.

  python scripts/benchmark.py --config=configs/benchmark_keras_match.py \\
    --keras_python=/tmp/kvenv/bin/python --out=runs/bench_keras

Image: Conv(32, 3x3, VALID) -> relu -> flatten (30x30x32) -> dense 64 -> relu, no pooling. Text: embedding 64
-> LSTM 64 -> dense 64 -> relu. Concat -> linear softmax head, Adam (lr 1e-3, constant), batch 32. What
differs: the Keras LSTM uses relu where this one uses tanh, and its vocabulary is 64 ids, mmshapes' own.

It exists to time mmlearn's loop against Keras on the same model (docs/benchmark.md, which also makes the
`--keras_python` interpreter); no accuracy is measured for it.
"""

from mmlearn.config import schema


def get_config():
  config = schema.get_config("classification")
  config.model.modalities.image = {
    "encoder": "cnn",
    "widths": (32,),
    "dense": 64,
    "padding": "VALID",
    "pool": False,
    "conv": "patches",  # Measured on the 2-core CPU: 0-10% faster than "xla" at batch 32, ~10% at 256.
  }
  config.model.modalities.text = {"encoder": "lstm", "embed_dim": 64, "hidden": 64, "dense": 64}
  config.classification.head_hidden = ()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 0
  config.optimizer.schedule = "constant"
  config.batch_size = 32
  # Batches above 64 examples are trained in chunks of 64 (`microbatch_size`, the same update): the dense
  # layer's 28,800-wide input then stays in cache. No effect at batch 32. Measured in docs/benchmark.md.
  config.microbatch_size = 64
  return config
