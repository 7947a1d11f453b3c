"""Time and memory of loading a pretrained checkpoint's towers into mmlearn's parameter tree.

  /tmp/ptvenv/bin/python tests/fixtures/make_pretrained.py --full_size_clip /tmp/clip_b16
  python scripts/pretrained_benchmark.py --checkpoint=/tmp/clip_b16

Measures what a run does between "the model's shapes are known" and "its parameters are JAX arrays":
`mmlearn.pretrained.loading.load` (memory-mapped tensors converted one at a time into the Flax layout)
and placing the result on the default device. The model's shapes come from an abstract `init`
(`jax.eval_shape`), so no random weights are made. Prints the wall time, the checkpoint's size and the
process's peak resident memory above what it held before loading (Linux: VmHWM after resetting it).
Targets (docs/pretrained.md): under 10 s, under 2x the checkpoint's size.
"""

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn.errors import USER_ERRORS, fail  # noqa: E402
from mmlearn.models.dual_encoder import DualEncoder  # noqa: E402
from mmlearn.pretrained import checkpoint, loading  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A CLIP or SigLIP checkpoint directory.")
flags.mark_flags_as_required(["checkpoint"])
FLAGS = flags.FLAGS


def status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
  """Sets VmHWM to the current resident size (Linux: writing 5 to clear_refs)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def measure(directory: str) -> dict[str, float]:
  image, text = loading.towers_of(directory, ("image", "text"))
  model = DualEncoder(
    modalities={"image": loading.tower(image, directory), "text": loading.tower(text, directory)},
    embed_dim=1,
    log_scale_init=0.0,
    project=False,
  )
  config = checkpoint.read_json(directory, checkpoint.CONFIG)
  size = config["vision_config"].get("image_size", 224)
  positions = config["text_config"].get("max_position_embeddings", 77)
  batch = {"image": np.zeros((1, size, size, 3), np.float32), "text": np.zeros((1, positions), np.int32)}
  rng = jax.random.PRNGKey(0)
  towers = loading.find_towers(model.init, rng, batch)
  abstract = jax.eval_shape(model.init, rng, batch)
  reset_peak()
  before = status_kib("VmRSS")
  start = time.perf_counter()
  variables = loading.load(abstract, towers)  # Its parameters come back as JAX arrays.
  jax.block_until_ready(variables)
  seconds = time.perf_counter() - start
  peak = status_kib("VmHWM") - before
  parameters = sum(x.size for x in jax.tree.leaves(variables["params"]))
  file_mib = checkpoint.existing_file(directory, checkpoint.WEIGHTS).stat().st_size / 2**20
  return {"seconds": seconds, "file_mib": file_mib, "peak_mib": peak / 1024, "parameters": parameters}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    result = measure(FLAGS.checkpoint)
  except USER_ERRORS as e:
    fail(e)
  ratio = result["peak_mib"] / result["file_mib"]
  print(
    f"loaded {result['parameters']:,} parameters in {result['seconds']:.2f} s; checkpoint "
    f"{result['file_mib']:.0f} MiB, peak memory above the baseline {result['peak_mib']:.0f} MiB "
    f"({ratio:.2f}x the checkpoint)"
  )


if __name__ == "__main__":
  app.run(main)
