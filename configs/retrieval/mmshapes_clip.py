"""Image <-> caption retrieval on mmshapes' `retrieval` build, CLIP loss.

Towers: the default config's CNN (image) and LSTM (text), each projected to a 64-d unit-norm embedding.
The headline counts only the paired item as right (rule `pair`). Every caption names shape, colour, size
and quadrant, so items with the same four attributes are also fair answers; `relevance` reports that
lenient rule beside it (128 descriptions; about 32 relevant items per query in the 4,096-item test
split).
"""

import ml_collections

from mmlearn.config import schema as defaults


def get_config(loss: str = "clip") -> ml_collections.ConfigDict:
  config = defaults.get_config()
  config.task = "retrieval"
  config.dataset.config = "retrieval"
  config.retrieval.loss = loss
  config.retrieval.embed_dim = 64
  config.retrieval.relevance = ("shape", "colour", "size", "quadrant")
  config.retrieval.random_baseline = True
  config.optimizer.update(name="adam", learning_rate=2e-3, warmup_steps=100, schedule="cosine")
  config.batch_size = 128
  config.num_epochs = 4.0
  return config
