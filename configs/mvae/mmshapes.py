"""MVAE on mmshapes' `retrieval` build: caption -> image generation with a shared latent space.

  python -m mmlearn.main --config=configs/mvae/mmshapes.py --workdir=runs/mvae_mmshapes_shift5
  python -m mmlearn.main --config=configs/mvae/judge_mmshapes.py --workdir=runs/judge_mmshapes
  python scripts/generate.py --workdir=runs/mvae_mmshapes_shift5 --judge=runs/judge_mmshapes \\
    --split=validation

The `retrieval` build has every image in colour and every caption naming shape, colour, size and quadrant,
so a caption determines what the image should show and caption -> image coherence is well defined
(judged by `judge_mmshapes.py`; `scripts/generate.py --judge=...`). Encoders: the default CNN and LSTM;
decoders: transposed convs from 8x8 to 32x32 pixels, moved by the image's private 2-D latent (below),
and an LSTM language model over the captions.

Tuned on validation caption -> image coherence at temperature 1 (the judge's label accuracy on one sample
per validation caption, 2,048 captions, seed 0; `scripts/generate.py --split=validation`), each setting
between two candidates fixed before its runs: the learning rate, 1e-3 or 2e-3 (2e-3: at 1e-3 the outlines
were still blurred at the last step), then the bound of the image's private translation, 3 or 5 pixels
at lr 2e-3 (5: the higher coherence, though its Fréchet distance is further). The design choices below
were settled in an earlier round and are described by what failed without them.

Reaches (1,600 steps of 128, seed 0, temperature 1): validation label coherence 79.0% (shape 79.1%,
colour 99.90%) at 13.0x the real-vs-real Fréchet floor, against 76.3% with a 3-pixel bound; the
learning rate was chosen under an earlier judge, 71.4% at 2e-3 against 47.3% at 1e-3. Test, for the
selected run: docs/generation.md, "Measured: caption -> image on mmshapes", and the README's generation
table.
"""

import ml_collections

from mmlearn.config import schema


def get_config() -> ml_collections.ConfigDict:
  config = schema.get_config("mvae")
  config.dataset.config = "retrieval"
  config.model.modalities = ml_collections.ConfigDict(
    {
      "image": {"encoder": "cnn", "widths": (32, 64), "dense": 128},
      "text": {"encoder": "lstm", "embed_dim": 32, "hidden": 128},
    }
  )
  config.mvae.latent_dim = 32
  config.mvae.decoders.image.update(shape=(32, 32, 3), widths=(64, 32), std=0.1)
  config.mvae.decoders.text.update(embed_dim=32, hidden=128)
  # Each caption's posterior alone must also reconstruct the image: without it, the LSTM decoder models
  # the short captions on its own, the text expert collapses to the prior (its KL falls to ~0.1 nats),
  # and caption -> image samples ignore the caption.
  config.mvae.cross_reconstruction = True
  # A caption names the quadrant but not where in it the shape sits. With the shared z alone, the image
  # decoder given a caption's z can only draw the average over those positions: a blurred blob. A 2-wide
  # image-only latent, applied as a translation of at most `max_shift` pixels, holds that offset, and
  # generation draws it from the prior. (Read as 4 decoder features instead, it took the shape and size
  # as well.)
  config.mvae.private_dims.image = 2
  config.mvae.decoders.image.update(translate=True, max_shift=5.0)  # Chosen on validation.
  config.mvae.kl_anneal_steps = 500
  # Learning rate chosen on validation: see the module docstring.
  config.optimizer.update(name="adam", learning_rate=2e-3, warmup_steps=100, schedule="cosine")
  config.batch_size = 128
  config.num_epochs = 10.0  # 1,600 steps.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 800
  config.eval_every_steps = 800  # Sample grids (and the ELBOs) during training.
  return config
