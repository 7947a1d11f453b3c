"""A seconds-long run of the default setup on the `tiny` mmshapes build: for tests and smoke checks.

  python -m mmlearn.main --config=configs/tiny.py --workdir=runs/tiny

Six steps of a scaled-down model check that the pieces run together (docs/reliability.md prints its
`error:` lines), not what the model learns, so no accuracy is measured for it.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.config = "tiny"
  config.model.modalities.image.widths = (8,)
  config.model.modalities.image.dense = 16
  config.model.modalities.text.embed_dim = 8
  config.model.modalities.text.hidden = 16
  config.classification.head_hidden = (16,)
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 6
  config.optimizer.warmup_steps = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  return config
