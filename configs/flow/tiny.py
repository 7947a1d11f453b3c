"""A seconds-long flow run on the `retrieval_tiny` mmshapes build, for tests (loss, EMA, grids).

  python -m mmlearn.main --config=configs/flow/tiny.py --workdir=runs/flow_tiny

Ten steps of a scaled-down U-Net check the pieces, not the samples: no coherence is measured for it.
"""

from configs.flow import mmshapes


def get_config():
  config = mmshapes.get_config()
  config.dataset.config = "retrieval_tiny"
  config.model.modalities.text.update(embed_dim=8, hidden=16)
  config.flow.update(widths=(8, 16), groups=4, embed_dim=16, num_steps=3, grid_conditions=4, grid_samples=3)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=2)
  config.ema_decay = 0.9
  config.batch_size = 32
  config.eval_batch_size = 128
  config.num_train_steps = 10
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.eval_every_steps = 0
  return config
