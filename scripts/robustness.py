"""Robustness suite of a trained classification run: accuracy against missing rate and input noise.

  python scripts/robustness.py --workdir=runs/avmnist_concat [--split=test] [--nonoise] [--num_examples=N]

Restores the state the run reports (its best-validation one where it selects one, else the latest) and
evaluates `--split` with each modality, and all of them, missing at rates 0, 0.1, ..., 0.9 (filled by the
run's own `missing.imputation`), and with Gaussian noise of std 0, 0.1, ..., 0.9 added to each array
modality (see `mmlearn.evaluators.robustness`), printing each point as it is measured. Writes into
`--output` (default WORKDIR/robustness): `robustness.csv` (one row per curve: area, then each level),
`robustness.md`, and `robustness.png` (accuracy against level, one panel per kind). A missing run, a run
of another task or a bad flag ends with one `error:` line and exit status 1.
"""

import os
import sys

import matplotlib
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn import cli  # noqa: E402
from mmlearn import parallel as parallel_lib  # noqa: E402
from mmlearn.errors import USER_ERRORS, fail  # noqa: E402
from mmlearn.evaluators import registry as evaluators  # noqa: E402
from mmlearn.evaluators import robustness  # noqa: E402
from mmlearn.launch import report  # noqa: E402
from mmlearn.runs import restore  # noqa: E402
from mmlearn.tasks.contract import Classifier  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished (or checkpointed) classification run.")
flags.DEFINE_string("split", "test", "The split to evaluate.")
flags.DEFINE_bool("noise", True, "Also measure the Gaussian-noise curves.")
flags.DEFINE_string("output", None, "Directory of the outputs; default WORKDIR/robustness.")
flags.DEFINE_integer(
  "num_examples", 0, "Evaluate a seeded random subset of this many examples of --split (0: all of it)."
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def measure(workdir: str, split: str, noise: bool, num_examples: int = 0) -> list[robustness.Curve]:
  """The curves; each point evaluates the split (or `num_examples` of it: a curve is 10-30 passes)."""
  config = restore.read_config(workdir)
  restore.require_task(config, "classification", workdir, "the robustness suite")
  sources, _, task, variables = restore.load_run(config, workdir, (split,))
  assert isinstance(task, Classifier)  # A classification run's task (`require_task`).
  context = evaluators.EvalContext(
    par=parallel_lib.DataParallel(config.parallel.mode),
    dataset=config.dataset.name,
    batch_size=config.eval_batch_size,
    max_tokens=config.dataset.max_tokens,
    load_run=restore.load_run_variables,
  )
  evaluator = robustness.RobustnessEvaluator(
    task, context, sources[split], split=split, noise=noise, num_examples=num_examples, log=print
  )
  return evaluator.curves(variables)


def write(curves: list[robustness.Curve], output: str, title: str) -> None:
  os.makedirs(output, exist_ok=True)
  rows = robustness.rows(curves)
  report.write_csv(os.path.join(output, "robustness.csv"), rows)
  header = ["curve", "area", *[f"{level:g}" for level in curves[0].levels]]
  cells = [
    [row["curve"], report.format_metric("accuracy", row["area"])]
    + [report.format_metric("accuracy", row[h]) for h in header[2:]]
    for row in rows
  ]
  with open(os.path.join(output, "robustness.md"), "w") as f:
    f.write(f"Accuracy ({title}) against the level; area = mean accuracy over the curve.\n\n")
    f.write(report.markdown_table(header, cells))
  kinds = sorted({c.kind for c in curves})
  fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
  for ax, kind in zip(axes[0], kinds, strict=True):
    for c in curves:
      if c.kind == kind:
        ax.plot(c.levels, c.values, marker="o", label=f"{c.target} (area {c.area:.3f})")
    ax.set_xlabel("missing rate" if kind == "missing" else "noise std ([-1, 1] units)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{kind}: {title}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(output, "robustness.png"), dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  output = FLAGS.output or os.path.join(FLAGS.workdir, "robustness")
  try:
    curves = measure(FLAGS.workdir, FLAGS.split, FLAGS.noise, FLAGS.num_examples)
  except USER_ERRORS as e:
    fail(e)
  subset = f", {FLAGS.num_examples} examples" if FLAGS.num_examples else ""
  write(curves, output, f"{os.path.basename(os.path.normpath(FLAGS.workdir))}, {FLAGS.split}{subset}")
  for c in curves:
    print(f"{c.name:24s} area {c.area:.4f}  " + " ".join(f"{v:.3f}" for v in c.values))
  print(f"wrote {output}/robustness.{{csv,md,png}}")


if __name__ == "__main__":
  app.run(main)
