"""AV-MNIST classification in MultiBench's reference setting: one config for every fusion and both towers.

  python -m mmlearn.main --config=configs/avmnist/fusion.py:late --workdir=runs/avmnist_late
  python -m mmlearn.main --config=configs/avmnist/fusion.py:image_only --workdir=runs/avmnist_image
  python -m mmlearn.main --config=configs/avmnist/fusion.py:concat,towers=plain --workdir=runs/av_plain

The text after ':' is a registered fusion (concat, sum, late, gated, attention, tensor, low_rank_tensor,
multiplicative) or `image_only` / `audio_only` (one LeNet -> MLP), then optionally `towers=plain` for
the BatchNorm-free LeNets (`configs/avmnist/base.py`). Default: `concat` on the reference towers.

MultiBench's `avmnist_simple_late_fusion` setting: the LeNet towers -> fusion -> MLP (240 -> 100 -> 10
for concat), SGD lr 0.1 (no momentum), weight decay 1e-4, batch 40, on the `noisy` build, one epoch, the
best epoch by validation accuracy (`select_metric`, evaluated every epoch).

Reaches on validation, accuracy in % (mean +- std over seeds 0-2; reference towers, one epoch = 1,375
steps, builder 1.4.0):
  late 88.66 +- 0.63 (the fusion validation selects), concat 88.19 +- 2.02, low_rank_tensor 87.94 +- 1.26,
  gated 87.78 +- 0.25, attention 86.50 +- 2.49, sum 86.18 +- 0.06, tensor 85.97 +- 2.86, multiplicative
  diverges (every seed, within 7 steps); image_only 66.36 +- 0.94, audio_only 71.07 +- 2.24.
Test, every row: docs/classification.md, "AV-MNIST fusion results", with the `scripts/results.py` command
that trains the table. Five epochs at a learning rate chosen on validation:
`configs/sweeps/avmnist_converged.py`. With `towers=plain`, seed 0: `concat` 90.48% after one epoch (the
clean validation accuracy in docs/imbalance-and-missing.md's robustness table, without modality
dropout), `audio_only` 80.24% after 3 epochs (`--config.num_epochs=3`: the flow's pretrained audio
encoder, docs/generation.md).
"""

import ml_collections

from configs.avmnist import base
from mmlearn.config import schema

UNIMODAL = {"image_only": "image", "audio_only": "audio"}  # The modality each keeps.


def parse(arg: str) -> tuple[str, dict[str, str]]:
  """`"late,towers=plain"` -> ("late", {"towers": "plain"})."""
  name, *options = arg.split(",")
  settings = {}
  for option in options:
    key, sep, value = option.partition("=")
    if not sep or key not in ("towers",):
      raise ValueError(f"configs/avmnist/fusion.py takes FUSION[,towers=reference|plain], got {arg!r}")
    settings[key] = value
  return name, settings


def get_config(arg: str = "concat") -> ml_collections.ConfigDict:
  fusion, settings = parse(arg)
  config = base.use_avmnist(schema.get_config("classification"), settings.get("towers", "reference"))
  if fusion in UNIMODAL:
    config.model.modalities = ml_collections.ConfigDict(
      {UNIMODAL[fusion]: config.model.modalities[UNIMODAL[fusion]]}
    )
    fusion = "concat"
  config.classification.fusion = fusion
  config.classification.head_hidden = (100,)
  config.optimizer.update(
    name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=1e-4, warmup_steps=0, schedule="constant"
  )
  config.batch_size = 40
  config.eval_batch_size = 400
  config.num_epochs = 1.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 1375  # One epoch (55,000 / 40): runs of several epochs keep the best one.
  config.select_metric = "validation/accuracy"
  return config
