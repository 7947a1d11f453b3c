"""A seconds-long MVAE run on the `retrieval_tiny` mmshapes build, for tests (KL annealing, grids).

  python -m mmlearn.main --config=configs/mvae/tiny.py --workdir=runs/mvae_tiny

Forty steps of a scaled-down model check the pieces, not the samples: no coherence is measured for it.
"""

from configs.mvae import mmshapes


def get_config():
  config = mmshapes.get_config()
  config.dataset.config = "retrieval_tiny"
  config.model.modalities.image.update(widths=(8,), dense=16)
  config.model.modalities.text.update(embed_dim=8, hidden=16)
  config.mvae.latent_dim = 8
  config.mvae.decoders.image.widths = (16, 8)
  config.mvae.decoders.text.update(embed_dim=8, hidden=32)
  config.mvae.kl_anneal_steps = 20
  config.mvae.grid_conditions = 4
  config.mvae.grid_samples = 3
  config.optimizer.update(learning_rate=3e-3, warmup_steps=2)
  config.batch_size = 32
  config.eval_batch_size = 128
  config.num_train_steps = 40
  config.log_every_steps = 10
  config.checkpoint_every_steps = 20
  config.eval_every_steps = 20
  return config
