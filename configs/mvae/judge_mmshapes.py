"""The coherence judge for mmshapes generation: the default image-only classifier on the `retrieval` build.

mmshapes' label is `shape * 4 + colour`, and the `retrieval` build's images are all in colour, so this
classifier reads exactly shape and colour: its label agreeing with the caption's is shape + colour
coherence (`scripts/generate.py --judge=...` also splits it into shape and colour). Its own test accuracy
is reported beside the coherence it judges.
"""

from configs import mmshapes_image_only


def get_config():
  config = mmshapes_image_only.get_config()
  config.dataset.config = "retrieval"
  config.optimizer.grad_clip_norm = 0.0  # As the judge of the published coherence figures was trained.
  return config
