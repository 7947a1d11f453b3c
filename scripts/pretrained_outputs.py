"""Embed a checkpoint's reference inputs with mmlearn's towers, for checking an export with the reference
library (`tests/fixtures/make_pretrained.py --check_export`).

  python scripts/pretrained_outputs.py --checkpoint=exports/clip_ft \\
    --inputs=tests/fixtures/pretrained/clip_a/reference.npz --out=/tmp/clip_ft_outputs.npz
  /tmp/ptvenv/bin/python tests/fixtures/make_pretrained.py --check_export exports/clip_ft \\
    --reference_npz /tmp/clip_ft_outputs.npz --layout_reference tests/fixtures/pretrained/clip_a

Reads `pixel_values` (NHWC), `input_ids` and `attention_mask` from `--inputs` (a fixture's
reference.npz) and writes them to `--out` with mmlearn's `image_embeds` and `text_embeds` of the
checkpoint (a CLIP or SigLIP directory), in float32.
"""

import os
import sys

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn.errors import USER_ERRORS, fail  # noqa: E402
from mmlearn.models.encoders import ENCODERS  # noqa: E402
from mmlearn.pretrained import checkpoint, loading  # noqa: E402
from mmlearn.pretrained.formats import FORMATS  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A CLIP or SigLIP checkpoint directory (e.g. an mmlearn export).")
flags.DEFINE_string("inputs", None, "An npz with pixel_values, input_ids and attention_mask.")
flags.DEFINE_string("out", None, "The npz to write: the inputs and mmlearn's embeddings.")
flags.mark_flags_as_required(["checkpoint", "inputs", "out"])
FLAGS = flags.FLAGS


def embeddings(directory: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The towers' `image_embeds` and `text_embeds` of `inputs`, with `directory`'s weights."""
  config, tensors = checkpoint.read_json(directory, checkpoint.CONFIG), checkpoint.read_tensors(directory)
  image, text = loading.towers_of(directory, ("image", "text"))
  out = {}
  for name, tower, args in (
    ("image_embeds", image, (inputs["pixel_values"],)),
    ("text_embeds", text, (inputs["input_ids"], inputs["attention_mask"])),
  ):
    params = FORMATS.get(tower).to_params(tensors, config, directory)
    module = ENCODERS.get(tower)(checkpoint=directory)
    out[name] = np.asarray(jax.jit(module.apply)({"params": params}, *args))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    inputs = dict(np.load(FLAGS.inputs))
    inputs = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    np.savez(FLAGS.out, **inputs, **embeddings(FLAGS.checkpoint, inputs))
  except USER_ERRORS as e:
    fail(e)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
