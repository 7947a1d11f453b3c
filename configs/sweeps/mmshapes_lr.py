"""Learning rate x seed on the default mmshapes classifier, one epoch each: 3 x 2 = 6 variants.

  python scripts/sweep.py --config=configs/sweeps/mmshapes_lr.py --workdir=runs/sweep_lr --parallel=2
  python scripts/sweep.py --config=configs/sweeps/mmshapes_lr.py:sum --workdir=runs/sweep_lr_sum

The text after ':' picks the fusion (`get_config("sum")`), as `configs/avmnist/fusion.py:tensor` does.
It shows the sweep tools (docs/workflow.md, "Sweeps"; Slurm: docs/cluster.md); one epoch is too short
to choose the default's learning rate with.

Reaches: validation not measured. The table in docs/workflow.md, "Sweeps", predates the default's
gradient clipping and lists test accuracy only.
"""

from configs import default


def get_config(fusion: str = "concat"):
  config = default.get_config()
  config.classification.fusion = fusion
  config.num_epochs = 1.0
  return config


def get_sweep(h):
  return h.product(h.sweep("optimizer.learning_rate", [0.03, 0.1, 0.3]), h.sweep("seed", [0, 1]))
