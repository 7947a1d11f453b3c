"""mmshapes at imbalance ratio 100: each re-weighting loss (and class-balanced sampling) x 2 lrs x 2 seeds.

  python scripts/sweep.py --config=configs/sweeps/mmshapes_imbalance.py --workdir=runs/imbalance \\
    --metric=validation/balanced_accuracy

Validation and test stay balanced, so balanced accuracy measures how well the tail classes are learned.
Every variant trains 640 steps, as the balanced default does (4 epochs of 20,480): 4 epochs of the
long-tailed subset (3,800 examples at ratio 100) would be ~120 steps, too few to learn even the head.
Candidate learning rates: 0.1 (the default SGD: momentum 0.9) and 0.3; each loss is compared at its
better rate on validation balanced accuracy, and its test figure is reported for that rate only. Why
larger, not smaller: the re-weighting losses scale the head examples that fill most of a batch down
(inverse frequency: 0.19 for a 1,280-example class), so the same rate is a smaller step for them; a
first sweep with 0.02 left every loss far behind. The config after ':' sets the ratio
(`mmshapes_imbalance.py:10`).

Reaches (ratio 100, 640 steps; validation balanced accuracy, mean of seeds 0 and 1, each loss at its
selected rate): logit_adjusted 94.87 (lr 0.1, first), cross_entropy 92.19 (0.1), cross_entropy with the
class-balanced sampler 87.16 (0.3), inverse_frequency 86.04 (0.1), focal 85.60 (0.3), class_balanced
85.13 (0.3). Test, for the selected rate of each: docs/imbalance-and-missing.md, "Class imbalance".
"""

from configs import default


def get_config(ratio: str = "100"):
  config = default.get_config()
  config.classification.imbalance_ratio = float(ratio)
  config.num_train_steps = 640
  return config


def get_sweep(h):
  losses = h.sweep(
    "classification.loss", ["cross_entropy", "inverse_frequency", "class_balanced", "focal", "logit_adjusted"]
  )
  sampled = h.zip(
    h.sweep("classification.loss", ["cross_entropy"]), h.sweep("classification.sampler", ["class_balanced"])
  )
  rates = h.sweep("optimizer.learning_rate", [0.1, 0.3])
  return h.product(h.chain(losses, sampled), rates, h.sweep("seed", [0, 1]))
