"""One table comparing a sweep's variants by their robustness curves: selected on validation, test once.

  for v in runs/avmnist_missing/*/; do for s in validation test; do
    python scripts/robustness.py --workdir=$v --split=$s --nonoise --num_examples=2000 \\
      --output=$v/robustness_$s
  done; done
  python scripts/robustness_table.py --workdir=runs/avmnist_missing

Reads each variant's `robustness_validation/robustness.csv` and `robustness_test/robustness.csv` (the
names `--subdir_format` builds from the split) and its final metrics (clean accuracy on the whole split,
at the selected step where the run selects one, as the curves are), selects the variant with the highest
mean area on validation over the curves `--prefix` picks (default the missing-modality ones), and writes
`robustness.md` and `robustness.csv` into `--workdir`. A variant lacking a split's curves is listed
without them and is not selectable.
"""

import csv
import math
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn.errors import USER_ERRORS, DataError, fail  # noqa: E402
from mmlearn.launch import local as launcher  # noqa: E402
from mmlearn.launch import report  # noqa: E402

flags.DEFINE_string("workdir", None, "A sweep's root directory: one sub-directory per variant.")
flags.DEFINE_string("subdir_format", "robustness_{split}", "Where a variant keeps a split's curves.")
flags.DEFINE_string("prefix", "missing/", "The curves compared: those whose name starts with this.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS

SPLITS = ("validation", "test")


def read_areas(path: str, prefix: str) -> dict[str, float]:
  """Curve name -> area, for the curves starting with `prefix`; empty when the file is absent."""
  if not os.path.exists(path):
    return {}
  with open(path, newline="") as f:
    return {row["curve"]: float(row["area"]) for row in csv.DictReader(f) if row["curve"].startswith(prefix)}


def variant_row(workdir: str, variant: str) -> dict:
  row = {"variant": variant}
  finished = launcher.state(os.path.join(workdir, variant)) == "finished"
  metrics = launcher.final_metrics(os.path.join(workdir, variant)) if finished else {}
  for split in SPLITS:  # The state the curves were measured on: the selected one, where the run selects.
    row[f"{split}/accuracy"] = metrics.get(
      f"best/{split}/accuracy", metrics.get(f"{split}/accuracy", math.nan)
    )
    csv_path = os.path.join(workdir, variant, FLAGS.subdir_format.format(split=split), "robustness.csv")
    areas = read_areas(csv_path, FLAGS.prefix)
    row |= {f"{split}/{name}": area for name, area in areas.items()}
    row[f"{split}/mean area"] = float(np.mean(list(areas.values()))) if areas else math.nan
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if not os.path.isdir(FLAGS.workdir):
      raise DataError(f"{FLAGS.workdir}: no such sweep directory")
    variants = sorted(d for d in os.listdir(FLAGS.workdir) if os.path.isdir(os.path.join(FLAGS.workdir, d)))
    rows = [variant_row(FLAGS.workdir, v) for v in variants]
    if all(math.isnan(r["validation/mean area"]) for r in rows):
      raise DataError(f"{FLAGS.workdir}: no variant has validation curves ({FLAGS.subdir_format})")
  except USER_ERRORS as e:
    fail(e)
  curves = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("test/" + FLAGS.prefix)})
  selected = report.select([r["validation/mean area"] for r in rows], "area")
  columns = ["validation/accuracy", "validation/mean area", "test/accuracy"]
  columns += [f"test/{c}" for c in curves] + ["test/mean area"]
  report.write_csv(
    os.path.join(FLAGS.workdir, "robustness.csv"),
    [{c: r.get(c, "") for c in ["variant", *columns]} for r in rows],
  )
  cells = [
    [f"`{r['variant']}`" + (" (selected)" if i == selected else "")]
    + [report.format_metric("accuracy", r.get(c, math.nan)) for c in columns]
    for i, r in enumerate(rows)
  ]
  protocol = report.protocol_line(f"validation mean area of the {FLAGS.prefix} curves", "test")
  table = report.markdown_table(["variant", *columns], cells)
  with open(os.path.join(FLAGS.workdir, "robustness.md"), "w") as f:
    f.write(f"{protocol}\n\n{table}")
  print(protocol)
  print(table, end="")


if __name__ == "__main__":
  app.run(main)
