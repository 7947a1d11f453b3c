"""Export a run's pretrained towers as a Hugging Face checkpoint directory (LoRA adapters merged).

  python scripts/export_pretrained.py --workdir=runs/clip_ft --out=exports/clip_ft

Writes `--out` (which must not exist): `config.json` and `model.safetensors` with the tensor names,
shapes and dtypes of the checkpoint the run's towers were built from, plus its tokenizer and
preprocessor files (`mmlearn.pretrained.export`). The reference library loads it with
`CLIPModel.from_pretrained(out)` (or `SiglipModel`, `ASTModel`), and so does an mmlearn config:
`tower("clip_vision", out)`. A run whose towers come from several checkpoints names one with
`--checkpoint`.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn import cli  # noqa: E402
from mmlearn.errors import USER_ERRORS, fail  # noqa: E402
from mmlearn.pretrained import export  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished (or checkpointed) run with pretrained towers.")
flags.DEFINE_string("out", None, "The checkpoint directory to write; it must not exist.")
flags.DEFINE_string("checkpoint", "", "The source checkpoint to export, when the towers come from several.")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  try:
    written = export.export_run(FLAGS.workdir, FLAGS.out, source=FLAGS.checkpoint)
  except USER_ERRORS as e:
    fail(e)
  print(f"exported {written}")


if __name__ == "__main__":
  app.run(main)
