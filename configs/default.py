"""Default config: CNN(image) + LSTM(text) -> concat -> MLP on mmshapes, trained with SGD + momentum.

Reaches >= 95% test accuracy on mmshapes within a few minutes on a 2-core CPU (see README table).
Override fields on the command line, e.g. `--config.optimizer.learning_rate=0.1`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "classification"

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "mmshapes"
  config.dataset.config = "default"  # TFDS builder config: sizes and generator seed.
  # Where TFDS writes/reads prepared files; None -> $MMLEARN_DATA_DIR or ~/tensorflow_datasets.
  config.dataset.data_dir = config_dict.placeholder(str)
  # Raw files for builders that need them (AV-MNIST); None -> the builder's environment variable.
  config.dataset.manual_dir = config_dict.placeholder(str)
  config.dataset.max_tokens = 16  # Captions are padded/truncated to this many tokens (with a mask).
  config.dataset.eval_splits = ("validation", "test")

  config.model = ml_collections.ConfigDict()
  config.model.modalities = ml_collections.ConfigDict()
  config.model.modalities.image = ml_collections.ConfigDict(
    {"encoder": "cnn", "widths": (16, 32), "dense": 64}
  )
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "lstm", "embed_dim": 32, "hidden": 64})
  config.model.fusion = "concat"
  config.model.fusion_kwargs = ml_collections.ConfigDict()
  config.model.head_hidden = (64,)

  # Used by task="retrieval" only (dual encoder on config.model.modalities; see configs/retrieval/).
  config.retrieval = ml_collections.ConfigDict()
  config.retrieval.loss = "clip"  # clip | siglip
  config.retrieval.embed_dim = 64  # Joint embedding width (each tower's projection head).
  # Features that must agree for two items to count as relevant; () = only the paired item counts.
  config.retrieval.relevance = ()
  config.retrieval.query_chunk = 512  # Queries ranked at once: a [query_chunk, N] similarity block.
  config.retrieval.random_baseline = False  # Also report the metrics of random unit embeddings.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9  # sgd only
  config.optimizer.weight_decay = 0.0  # sgd/adam: L2 added to the gradient; adamw: decoupled decay.
  config.optimizer.warmup_steps = 50
  config.optimizer.schedule = "cosine"  # cosine | constant (both after linear warmup)
  config.optimizer.grad_clip_norm = 0.0  # 0 disables global-norm clipping.

  config.batch_size = 128  # Global batch, split over every device of every process.
  config.eval_batch_size = 512
  config.num_epochs = 4.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "shard_map"  # shard_map | pmap
  return config
