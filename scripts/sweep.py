"""Runs every variant of a config file's `get_sweep(h)` in its own workdir, then tabulates one metric.

  python scripts/sweep.py --config=configs/sweeps/mmshapes_lr.py --workdir=runs/lr --parallel=2
  python scripts/sweep.py --config=configs/sweeps/mmshapes_lr.py:sum --workdir=runs/lr_sum --dry_run
  python scripts/sweep.py --config=configs/sweeps/mmshapes_lr.py --workdir=runs/lr --launcher=slurm

Each variant trains as `python -m mmlearn.main --config=CONFIG --workdir=WORKDIR/<variant>
--config.KEY=VALUE ...`. Re-running the same command skips finished variants and resumes cut-off ones;
after raising the sweep file's `num_epochs`, `--extend` trains every variant on from its last checkpoint.
Writes `summary.csv`, `summary.md` and `summary.png` (the metric by variant) into `--workdir`; a failed
variant is listed with its error line, and the exit status is 1 if any failed.

`--launcher=slurm` submits each variant as a Slurm job instead (`mmlearn/launch/slurm.py`, same
skip / resume / `done.json` / summary behaviour); its settings come from the flags below or the sweep
file's `get_launcher()` dict (flags win). See docs/cluster.md.
"""

import dataclasses
import math
import os
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn.errors import USER_ERRORS, ConfigError, fail  # noqa: E402
from mmlearn.launch import local as launcher  # noqa: E402
from mmlearn.launch import report, sweep  # noqa: E402
from mmlearn.launch import slurm as slurm_launcher  # noqa: E402

flags.DEFINE_string("config", None, "Config file defining get_config and get_sweep, optionally FILE:ARG.")
flags.DEFINE_string("workdir", None, "Root directory: one sub-directory per variant, plus the summary.")
flags.DEFINE_integer("parallel", 1, "How many variants train at once.")
flags.DEFINE_string("metric", "validation/accuracy", "The metric variants are compared and selected by.")
flags.DEFINE_string(
  "report", None, "The metric reported beside it; default the same metric on test (validation/x -> test/x)."
)
flags.DEFINE_multi_string("override", [], "KEY=VALUE given to every variant, e.g. num_epochs=1.")
flags.DEFINE_bool(
  "extend",
  False,
  "Re-run finished variants too, with the trainer's --allow_config_changes: a longer config (num_epochs, "
  "num_train_steps) trains on from each variant's last checkpoint. Local launcher only.",
)
flags.DEFINE_bool("dry_run", False, "List the variants and their commands (or Slurm jobs); train nothing.")
flags.DEFINE_string(
  "launcher", "local", "Where variants train: `local` (subprocesses) or `slurm` (one job each)."
)
# Slurm settings (--launcher=slurm); unset ones come from the sweep file's get_launcher(), else the defaults.
flags.DEFINE_string("partition", None, "Slurm partition (default: the cluster's default partition).")
flags.DEFINE_integer("time_min", None, "Slurm time limit of each job, in minutes (default 60).")
flags.DEFINE_integer("nodes", None, "Nodes per job (default 1).")
flags.DEFINE_integer("tasks_per_node", None, "Tasks (trainer processes) per node (default 1).")
flags.DEFINE_integer("cpus_per_task", None, "CPUs per task (default 1).")
flags.DEFINE_integer("gpus_per_task", None, "GPUs per task (default 0).")
flags.DEFINE_integer(
  "max_requeues", None, "How often a job that reaches its time limit is requeued (default 3)."
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def summarize(records: list[dict], variants: dict[str, dict]) -> None:
  """Writes summary.csv (one row per variant), summary.md and summary.png into --workdir."""
  keys = list(dict.fromkeys(k for overrides in variants.values() for k in overrides))
  reported = FLAGS.report or report.test_counterpart(FLAGS.metric)
  rows = [
    {
      "variant": name,
      **{k: overrides.get(k, "") for k in keys},
      "status": record["status"],
      FLAGS.metric: record.get("metrics", {}).get(FLAGS.metric, ""),
      reported: record.get("metrics", {}).get(reported, ""),
      "wall_s": round(record["wall_s"], 1),
      "error": record.get("error", ""),
    }
    for record, (name, overrides) in zip(records, variants.items(), strict=True)
  ]
  values = [math.nan if r[FLAGS.metric] == "" else r[FLAGS.metric] for r in rows]
  tested = [math.nan if r[reported] == "" else r[reported] for r in rows]
  selected = report.select(values, FLAGS.metric)
  report.write_csv(os.path.join(FLAGS.workdir, "summary.csv"), rows)
  status = [f"failed: {r['error'].removeprefix('error: ')}" if r["error"] else r["status"] for r in rows]
  cells = [
    [
      f"`{r['variant']}`" + (" (selected)" if i == selected else ""),
      *(r[k] for k in keys),
      report.format_metric(FLAGS.metric, v),
      report.format_metric(reported, t),
      f"{r['wall_s']:.0f}",
      s,
    ]
    for i, (r, v, t, s) in enumerate(zip(rows, values, tested, status, strict=True))
  ]
  protocol = report.protocol_line(FLAGS.metric, reported)
  table = report.markdown_table(["variant", *keys, FLAGS.metric, reported, "wall time (s)", "status"], cells)
  with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
    f.write(f"{protocol}\n\n{table}")
  print(protocol)
  print(table, end="")
  report.bar_chart(
    os.path.join(FLAGS.workdir, "summary.png"),
    [r["variant"] + ("" if r["status"] == "done" else " (failed)") for r in rows],
    values,
    ylabel=FLAGS.metric,
    title=f"{FLAGS.metric} by variant",
  )


SLURM_FLAGS = [f.name for f in dataclasses.fields(slurm_launcher.Settings)]


def slurm_settings() -> slurm_launcher.Settings | None:
  """The Slurm settings for `--launcher=slurm`, None for `local`; Slurm flags without it are a mistake."""
  given = {name: FLAGS[name].value for name in SLURM_FLAGS}
  if FLAGS.launcher == "local":
    if set_flags := [f"--{name}" for name, value in given.items() if value is not None]:
      raise ConfigError(f"{', '.join(set_flags)} only apply with --launcher=slurm")
    return None
  if FLAGS.launcher != "slurm":
    raise ConfigError(f"unknown launcher {FLAGS.launcher!r}; known: local, slurm")
  if FLAGS.extend:
    raise ConfigError("--extend is for --launcher=local")
  if FLAGS["parallel"].present:
    raise ConfigError(
      "--parallel is for --launcher=local; Slurm runs as many jobs as the cluster has room for"
    )
  return slurm_launcher.settings(FLAGS.config, given)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    fixed = sweep.parse_fixed(FLAGS.override)
    variants = sweep.load(FLAGS.config, fixed)
    slurm = slurm_settings()
  except USER_ERRORS as e:
    fail(e)
  if FLAGS.dry_run:
    for name, overrides in variants.items():
      workdir = os.path.join(os.path.abspath(FLAGS.workdir), name)
      args = launcher.trainer_flags(FLAGS.config, workdir, {**fixed, **overrides})
      command = (
        slurm_launcher.describe(name, args, slurm)
        if slurm
        else shlex.join(["python", "-m", "mmlearn.main", *args])
      )
      print(f"{name} ({launcher.state(workdir)})\n  {command}")
    print(f"{len(variants)} variants" + (" (Slurm jobs)" if slurm else ""))
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if slurm is None:
    records = launcher.run_sweep(
      FLAGS.config, FLAGS.workdir, variants, fixed=fixed, parallel=FLAGS.parallel, extend=FLAGS.extend
    )
  else:
    try:
      records = slurm_launcher.run_sweep(FLAGS.config, FLAGS.workdir, variants, settings=slurm, fixed=fixed)
    except USER_ERRORS as e:
      fail(e)
  summarize(records, variants)
  if failed := sum(r["status"] != "done" for r in records):
    print(
      f"error: {failed} of {len(records)} variants failed (see {FLAGS.workdir}/summary.md)", file=sys.stderr
    )
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
