"""Flow matching on AV-MNIST (`noisy` build): spoken digit -> digit image, with classifier-free guidance.

The condition is MultiBench's audio LeNet on the 112x112 spectrogram (configs/avmnist/base.py); the
U-Net works at 28, 14 and 7 pixels. Audio -> image coherence is judged by `configs/mvae/judge_avmnist.py`.

`configs/flow/avmnist.py:RUN` starts the audio LeNet from the trained audio-only classifier RUN
(`configs/avmnist/audio_only.py:plain`, the same tower) and keeps it frozen: the velocity loss gives the
encoder little signal about which digit was spoken, the classifier's loss gives it nothing else. The two
variants (trained with the flow, or pretrained and frozen) are compared on validation coherence.
"""

import ml_collections

from configs import default
from configs.avmnist import base


def get_config(audio_encoder_run: str = "") -> ml_collections.ConfigDict:
  config = base.use_avmnist(default.get_config())
  config.task = "flow"
  config.model.modalities = ml_collections.ConfigDict({"audio": base.AUDIO})
  config.flow.update(target="image", widths=(32, 64, 64), blocks=1, groups=8, embed_dim=128)
  config.flow.update(cond_dropout=0.1, guidance_scale=1.0, num_steps=20, sampler="euler")
  config.optimizer.update(name="adam", learning_rate=1e-3, warmup_steps=100, schedule="cosine")
  config.optimizer.grad_clip_norm = 1.0
  config.ema_decay = 0.995
  config.batch_size = 64
  config.eval_batch_size = 250
  config.num_epochs = 2.0  # 1,719 steps (a time budget: about 30 minutes on the 2-core CPU).
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  if audio_encoder_run:
    config.init_from.update(workdir=audio_encoder_run, params="embed/encoder=audio_encoder")
    config.optimizer.frozen = "embed/encoder/"
  return config
