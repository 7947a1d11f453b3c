"""One AV-MNIST fusion trained for several epochs at each candidate learning rate, selected on validation.

  python scripts/sweep.py --config=configs/sweeps/avmnist_converged.py:tensor \\
    --workdir=runs/avmnist_converged/tensor --metric=best/validation/accuracy

The one-epoch fusion table (docs/classification.md) ranks fusions partly by how fast SGD moves them:
`tensor` is still at the image-only accuracy after one epoch, `multiplicative` diverges at lr 0.1. Here
each fusion trains for `EPOCHS` epochs at each learning rate in `LEARNING_RATES`, is evaluated on
validation every epoch, and keeps its best-validation state (`select_metric`); the sweep then picks the
learning rate by that best validation accuracy and reports the test accuracy of the state it selected.
The text after ':' names the fusion; the rest is MultiBench's setting (`configs/avmnist/base.py`).
`EPOCHS` was set by what ten runs cost on a 2-core CPU, not by convergence; docs/classification.md says
how far from converged the runs are. The candidates were fixed before any run.
"""

from configs.avmnist import base

EPOCHS = 3
LEARNING_RATES = (0.03, 0.1)


def get_config(fusion: str = "concat"):
  config = base.get_config(fusion)
  config.num_epochs = float(EPOCHS)
  return config


def get_sweep(h):
  return h.sweep("optimizer.learning_rate", list(LEARNING_RATES))
