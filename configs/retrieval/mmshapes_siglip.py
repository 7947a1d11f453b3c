"""Image <-> caption retrieval on mmshapes' `retrieval` build, SigLIP loss (else as mmshapes_clip.py)."""

from configs.retrieval import mmshapes_clip


def get_config():
  return mmshapes_clip.get_config("siglip")
