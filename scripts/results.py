"""Trains configs over several seeds and tabulates test accuracy (mean +- std), parameters and wall time.

  python scripts/results.py --workdir=runs/table --seeds=3 \
    --configs=configs/default.py,configs/mmshapes_image_only.py,configs/mmshapes_text_only.py \
    --override=num_epochs=2

Writes `results.md`, `results.csv` (one row per config) and `results.png` (a bar chart with the
seed-to-seed standard deviation as error bars) into `--workdir`. Each (config, seed) trains in its own
sub-directory; one that already finished (it holds `result.json`) is read back, not retrained, so an
interrupted table resumes where it stopped. A seed whose loss goes non-finite is recorded as diverged
(in its `result.json`, so it is not retried) and left out of the mean; the table counts it.
"""

import json
import os
import re
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn.config import files as config_files  # noqa: E402
from mmlearn.launch import report  # noqa: E402
from mmlearn.runs import metric_writer  # noqa: E402
from mmlearn.train import loop  # noqa: E402

flags.DEFINE_list("configs", None, "Config files to train.")
flags.DEFINE_string(
  "workdir", None, "Root directory: one sub-directory per config and seed, plus the tables."
)
flags.DEFINE_integer("seeds", 1, "Seeds 0..N-1 per config.")
flags.DEFINE_multi_string("override", [], "key=value applied to every config, e.g. num_epochs=2.")
flags.DEFINE_string("metric", "validation/accuracy", "The metric configs are compared and selected by.")
flags.DEFINE_string(
  "report", None, "The metric reported beside it; default the same metric on test (validation/x -> test/x)."
)
flags.mark_flags_as_required(["configs", "workdir"])
FLAGS = flags.FLAGS


def reported_metric() -> str:
  return FLAGS.report or report.test_counterpart(FLAGS.metric)


def run_name(spec: str) -> str:
  """A config's sub-directory: its variant (`fusion.py:late` -> `late`), else its file's name."""
  path, arg = config_files.split_spec(spec)
  name = arg if arg else os.path.basename(path).removesuffix(".py")
  return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name)


def run_once(path: str, seed: int) -> dict:
  """Trains one (config, seed), or reads back the result of a run that already finished."""
  workdir = os.path.join(FLAGS.workdir, run_name(path), f"seed{seed}")
  result_file = os.path.join(workdir, "result.json")
  if os.path.exists(result_file):
    with open(result_file) as f:
      return json.load(f)
  config = config_files.load_config(path, FLAGS.override)
  config.seed = seed
  start = time.perf_counter()
  try:
    results = loop.train_and_evaluate(config, workdir)
  except FloatingPointError as e:  # A diverged seed is a result of the config, recorded, not retried.
    result = {"diverged": str(e), "wall_s": time.perf_counter() - start}
  else:
    # Scalars only, as in metrics.jsonl; the confusion matrices are the run's confusion_<split>.png.
    result = {**metric_writer.scalars(results), "wall_s": time.perf_counter() - start}
  with open(result_file, "w") as f:
    json.dump(result, f)
  return result


def summarize(path: str, runs: list[dict]) -> dict:
  """Mean and std over the seeds that finished; seeds whose loss went non-finite are counted apart."""
  finished = [run for run in runs if "diverged" not in run]
  values = np.array([run[FLAGS.metric] for run in finished])
  tested = np.array([run.get(reported_metric(), float("nan")) for run in finished])
  return {
    "config": path,
    "seeds": len(finished),
    "diverged": len(runs) - len(finished),
    "mean": values.mean() if finished else float("nan"),
    "std": values.std(ddof=1) if len(values) > 1 else 0.0,
    "test_mean": tested.mean() if finished else float("nan"),
    "test_std": tested.std(ddof=1) if len(tested) > 1 else 0.0,
    "parameters": int(finished[0]["model/num_parameters"]) if finished else 0,
    "wall_s_per_run": float(np.mean([run["wall_s"] for run in finished])) if finished else float("nan"),
  }


def summary_cells(r: dict, *, selected: bool) -> list[str]:
  """One row of results.md; a config whose every seed diverged has no mean, parameter count or wall time."""
  name = f"`{r['config']}`" + (" (selected)" if selected else "")
  seeds = f"{r['seeds']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
  if not r["seeds"]:
    return [name, "every seed diverged", "-", seeds, "-", "-"]
  return [
    name,
    f"{r['mean']:.2%} +- {r['std']:.2%}",
    f"{r['test_mean']:.2%} +- {r['test_std']:.2%}",
    seeds,
    f"{r['parameters']:,}",
    f"{r['wall_s_per_run']:.0f}",
  ]


def write_tables(rows: list[dict]) -> None:
  report.write_csv(os.path.join(FLAGS.workdir, "results.csv"), rows)
  reported = reported_metric()
  selected = report.select([r["mean"] for r in rows], FLAGS.metric)
  header = [
    "config",
    f"{FLAGS.metric} (mean +- std)",
    f"{reported} (mean +- std)",
    "seeds",
    "parameters",
    "train wall time per run (s)",
  ]
  cells = [summary_cells(r, selected=i == selected) for i, r in enumerate(rows)]
  protocol = report.protocol_line(FLAGS.metric, reported)
  table = report.markdown_table(header, cells)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(f"{protocol}\n\n{table}")
  print(protocol)
  print(table, end="")
  report.bar_chart(
    os.path.join(FLAGS.workdir, "results.png"),
    [run_name(r["config"]) for r in rows],
    [r["mean"] for r in rows],
    errors=[r["std"] for r in rows],
    ylabel=FLAGS.metric,
    title=f"{FLAGS.metric}, mean +- std over seeds",
  )


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  rows = [summarize(path, [run_once(path, seed) for seed in range(FLAGS.seeds)]) for path in FLAGS.configs]
  write_tables(rows)


if __name__ == "__main__":
  app.run(main)
