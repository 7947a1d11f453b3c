"""AV-MNIST classification with a pretrained image tower (CLIP or SigLIP) beside the spectrogram LeNet.

  python -m mmlearn.main --config=configs/pretrained/fusion.py:ckpt=/ckpts/clip-vit-b16 \\
    --workdir=runs/avmnist_clip_frozen
  python -m mmlearn.main --config=configs/pretrained/fusion.py:ckpt=/ckpts/clip,fusion=late,freeze=false \\
    --workdir=runs/avmnist_clip_full

The text after ':' is `ckpt=DIR` (without it, the suite's tiny random-weight CLIP fixture), then
optionally `fusion=` (any registered fusion; concat by default) and `freeze=` true (the default: the
tower is a fixed feature extractor and only the audio tower, the fusion and the head train) or false
(the tower fine-tunes too). The digits are read as the checkpoint's processor reads images: resized to
its size with its filter, grey made RGB, its mean and std (`use_checkpoint_inputs`); the spectrograms
keep the `plain` LeNet (configs/avmnist/base.py).
"""

import os

import ml_collections

from configs.avmnist import base
from mmlearn.config import schema
from mmlearn.pretrained import loading
from mmlearn.pretrained.preprocessing import use_checkpoint_inputs

# Without `ckpt=`: the suite's tiny random-weight CLIP (tests/fixtures/pretrained), so the file runs as is.
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "pretrained", "clip_a")


def parse(arg: str) -> dict[str, str]:
  """`"ckpt=DIR,fusion=late"` -> {"ckpt": DIR, "fusion": "late"}, checked; without `ckpt`, `FIXTURE`."""
  settings = {"ckpt": FIXTURE} | dict(item.partition("=")[::2] for item in arg.split(",") if item)
  unknown = sorted(set(settings) - {"ckpt", "fusion", "freeze"})
  if unknown or not settings.get("ckpt") or settings.get("freeze", "true") not in ("true", "false"):
    raise ValueError(
      f"configs/pretrained/fusion.py takes ckpt=DIR[,fusion=NAME][,freeze=true|false], got {arg!r}"
    )
  return settings


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  settings = parse(arg)
  directory = settings["ckpt"]
  (image_tower,) = loading.towers_of(directory, ("image",))
  config = base.use_avmnist(schema.get_config("classification"), "plain")
  freeze = settings.get("freeze", "true") == "true"
  config.model.modalities.image = loading.tower(image_tower, directory, freeze=freeze)
  use_checkpoint_inputs(config.dataset, directory, text=False)
  config.classification.fusion = settings.get("fusion", "concat")
  config.classification.head_hidden = (100,)
  config.optimizer.update(name="adam", learning_rate=1e-3, warmup_steps=50, schedule="cosine")
  config.batch_size = 40
  config.eval_batch_size = 400
  config.num_epochs = 1.0
  config.select_metric = "validation/accuracy"
  config.eval_every_steps = 1375
  return config
