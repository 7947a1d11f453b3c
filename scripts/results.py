"""Trains a list of configs and tabulates their test accuracy and wall time (markdown + CSV).

  python scripts/results.py --workdir=runs/table \
    --configs=configs/default.py,configs/mmshapes_image_only.py,configs/mmshapes_text_only.py

Each config trains in `<workdir>/<config name>` (an existing finished run is evaluated, not retrained;
its wall time is then the evaluation's). The README's table comes from this script.
"""

import csv
import importlib.util
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn import train  # noqa: E402

flags.DEFINE_list("configs", None, "Config files to train.")
flags.DEFINE_string("workdir", None, "Root directory: one sub-directory per config, plus results.md/.csv.")
flags.mark_flags_as_required(["configs", "workdir"])
FLAGS = flags.FLAGS


def load_config(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv):
  del argv
  rows = []
  for path in FLAGS.configs:
    name = os.path.basename(path)[:-3]
    start = time.perf_counter()
    results = train.train_and_evaluate(load_config(path), os.path.join(FLAGS.workdir, name))
    rows.append(
      {
        "config": path,
        "test_accuracy": results["test/accuracy"],
        "validation_accuracy": results["validation/accuracy"],
        "wall_s": time.perf_counter() - start,
      }
    )
  with open(os.path.join(FLAGS.workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  lines = ["| config | test accuracy | validation accuracy | wall time (s) |", "| --- | --- | --- | --- |"]
  lines += [
    f"| `{r['config']}` | {r['test_accuracy']:.2%} | {r['validation_accuracy']:.2%} | {r['wall_s']:.0f} |"
    for r in rows
  ]
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
