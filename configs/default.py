"""Default config: CNN(image) + LSTM(text) -> concat -> MLP on mmshapes, trained with SGD + momentum.

  python -m mmlearn.main --config=configs/default.py --workdir=runs/default

The keys, their defaults and their comments live in `mmlearn/config/schema.py` (the core every config is
checked against, so it ships with the library) and in the classification task's own sections
(`mmlearn/tasks/classification.py`); this run changes one of them. Other mmshapes configs
import this file and override a few fields; configs for other datasets and tasks start from the schema.

Tuned on validation: `optimizer.grad_clip_norm`, candidates 0 (off), 1 and 2, over seeds 0-5 in float32
and bfloat16 (`config.precision`). Without clipping a seed now and then takes an early loss spike it does
not recover from within the 640 steps; 1 slows training for some seeds; 2 only caps the spikes. The
table and its commands: docs/training-core.md, "Choosing the default's gradient clipping".

Reaches (640 steps = 4 epochs of 128, clipping at 2): validation accuracy 99.99% averaged over seeds 0-3
in float32 (100.00% at seed 0) and 100.00% in bfloat16 (`--config.precision=bfloat16`). Test: the same
section of docs/training-core.md, and the README's "What the configs reach (measured)" table.
"""

import ml_collections

from mmlearn.config import schema


def get_config() -> ml_collections.ConfigDict:
  config = schema.get_config("classification")
  config.optimizer.grad_clip_norm = 2.0
  return config
