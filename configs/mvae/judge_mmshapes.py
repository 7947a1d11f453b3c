"""The coherence judge for mmshapes generation: the default image-only classifier on the `retrieval` build.

  python -m mmlearn.main --config=configs/mvae/judge_mmshapes.py --workdir=runs/judge_mmshapes

mmshapes' label is `shape * 4 + colour`, and the `retrieval` build's images are all in colour, so this
classifier reads exactly shape and colour: its label agreeing with the caption's is shape + colour
coherence (`scripts/generate.py --judge=...` also splits it into shape and colour). Its own test accuracy
is reported beside the coherence it judges.

Reaches (4 epochs of 128, seed 0): validation accuracy 99.9% on the real images. Test:
docs/generation.md, "Measured (mmshapes, caption -> image)" and "Measured: caption -> image on mmshapes".
"""

from configs import mmshapes_image_only


def get_config():
  config = mmshapes_image_only.get_config()
  config.dataset.config = "retrieval"
  config.optimizer.grad_clip_norm = 0.0  # As the judge of the published coherence figures was trained.
  return config
