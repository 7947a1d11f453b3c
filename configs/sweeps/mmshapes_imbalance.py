"""mmshapes at imbalance ratio 100: each re-weighting loss (and class-balanced sampling) x 2 lrs x 2 seeds.

  python scripts/sweep.py --config=configs/sweeps/mmshapes_imbalance.py --workdir=runs/imbalance \\
    --metric=test/balanced_accuracy

Validation and test stay balanced, so balanced accuracy measures how well the tail classes are learned.
Every variant trains 640 steps, as the balanced default does (4 epochs of 20,480): 4 epochs of the
long-tailed subset (3,800 examples at ratio 100) would be ~120 steps, too few to learn even the head.
Two learning rates because one need not suit every loss: a weighted loss multiplies the rare classes'
gradients many-fold, and the sampler shows a 13-example class as often as a 1,280-example one, so the
default SGD step (lr 0.1, momentum 0.9) may be too large for them. Compare each loss at its better rate,
chosen on validation. The config after ':' sets the ratio (`configs/sweeps/mmshapes_imbalance.py:10`).
"""

from configs import default


def get_config(ratio: str = "100"):
  config = default.get_config()
  config.dataset.imbalance_ratio = float(ratio)
  config.num_train_steps = 640
  return config


def get_sweep(h):
  losses = h.sweep(
    "classification.loss", ["cross_entropy", "inverse_frequency", "class_balanced", "focal", "logit_adjusted"]
  )
  sampled = h.zip(
    h.sweep("classification.loss", ["cross_entropy"]), h.sweep("dataset.sampler", ["class_balanced"])
  )
  rates = h.sweep("optimizer.learning_rate", [0.1, 0.02])
  return h.product(h.chain(losses, sampled), rates, h.sweep("seed", [0, 1]))
