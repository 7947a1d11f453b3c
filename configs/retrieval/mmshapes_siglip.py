"""Image <-> caption retrieval on mmshapes' `retrieval` build, SigLIP loss (else as mmshapes_clip.py).

  python -m mmlearn.main --config=configs/retrieval/mmshapes_siglip.py --workdir=runs/mmshapes_siglip

Reaches: validation not measured. Test (640 steps = 4 epochs of 128, seed 0, beside CLIP): docs/retrieval.md,
the mmshapes table under "Measured", and the README's retrieval table.
"""

from configs.retrieval import mmshapes_clip


def get_config():
  return mmshapes_clip.get_config("siglip")
