"""Pretrained towers (CLIP, SigLIP, the Audio Spectrogram Transformer) read from and written back to
their released Hugging Face checkpoints; see docs/pretrained.md."""

from mmlearn.pretrained import (
  ast,  # noqa: F401  (registers the "ast" encoder and its checkpoint format)
  clip,  # noqa: F401  (registers "clip_vision" and "clip_text")
  siglip,  # noqa: F401  (registers "siglip_vision" and "siglip_text")
)
