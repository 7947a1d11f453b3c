"""A run's directory: workdir lock and config, checkpoints, restore, init_from, best-checkpoint selection,
metric writing."""
