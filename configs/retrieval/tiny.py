"""A seconds-long image <-> caption retrieval run on the `retrieval_tiny` mmshapes build, for tests.

  python -m mmlearn.main --config=configs/retrieval/tiny.py --workdir=runs/retrieval_tiny

Six steps of scaled-down towers check the pieces, not the ranking: no recall is measured for it.
"""

from configs.retrieval import mmshapes_clip


def get_config(loss: str = "clip"):
  config = mmshapes_clip.get_config(loss)
  config.dataset.config = "retrieval_tiny"
  config.model.modalities.image.widths = (8, 16)
  config.model.modalities.image.dense = 32
  config.model.modalities.text.embed_dim = 16
  config.model.modalities.text.hidden = 32
  config.retrieval.embed_dim = 32
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_train_steps = 6
  config.optimizer.warmup_steps = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  return config
