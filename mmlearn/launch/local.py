"""Runs sweep variants, each as `python -m mmlearn.main` in its own workdir, up to `parallel` at once.

A variant is finished when its workdir holds `done.json`, which is written here only after the trainer
exits 0 and holds its final evaluation; a re-launched sweep reads it back instead of training again. A
workdir without it was cut off (or failed): the same command runs again, and the trainer resumes from
its latest checkpoint by itself. A failing variant is recorded with the trainer's `error:` line and the
others carry on. The trainer's output goes to `log.txt` in the workdir.

`extend` re-runs finished variants too, with the trainer's `--allow_config_changes`: after the sweep
file's `num_epochs` (or `num_train_steps`) was raised, each variant trains on from its last checkpoint
instead of from scratch, and its record's wall time adds both runs'. Its `done.json` is removed before
the trainer starts, so an extension cut off half-way resumes like any cut-off run.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER = (sys.executable, "-m", "mmlearn.main")
DONE, LOG = "done.json", "log.txt"


def trainer_flags(spec: str, workdir: str, overrides: dict[str, Any]) -> list[str]:
  """The trainer's flags: `--config=SPEC --workdir=DIR --config.KEY=VALUE ...`."""
  return [f"--config={spec}", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def state(workdir: str) -> str:
  """`finished` (it holds done.json), `cut off` (it trained but did not finish: it resumes) or `new`."""
  if os.path.exists(os.path.join(workdir, DONE)):
    return "finished"
  return "cut off" if os.path.isdir(os.path.join(workdir, "checkpoints")) else "new"


def final_metrics(workdir: str) -> dict[str, float]:
  """The final evaluation: the evaluation lines of `metrics.jsonl`'s last evaluated step, merged.

  A run that selects on validation writes two lines at its last step (the final evaluation, then the
  `best/` metrics), and both belong to its result.
  """
  final = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "resumed_from" not in record and any(k != "step" and not k.startswith("train/") for k in record):
        final = final | record if record.get("step") == final.get("step") else record
  if not final:
    raise ValueError("metrics.jsonl holds no evaluation")
  return final


def error_line(output: str, returncode: int) -> str:
  """The trainer's `error:` line, else its last line (a traceback's), else the exit status."""
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or [f"exit status {returncode}"])[-1]


def run_variant(
  name: str,
  args: list[str],
  workdir: str,
  trainer: Sequence[str],
  log: Callable[[str], None],
  extend: bool = False,
) -> dict[str, Any]:
  """Trains one variant unless it finished and not `extend`; returns its record (status, metrics or error)."""
  marker = os.path.join(workdir, DONE)
  earlier_s = 0.0
  if state(workdir) == "finished":
    with open(marker) as f:
      record = json.load(f)
    if record.get("args") != args:
      log(f"warning: {name} finished with other flags {record.get('args')}; delete {workdir} to rerun")
    if not extend:
      log(f"{name}: finished before, skipped")
      return {**record, "skipped": True}
    earlier_s = record.get("wall_s", 0.0)
    os.remove(marker)
  log(f"{name}: {'resuming' if state(workdir) == 'cut off' else 'starting'}")
  if extend:
    trainer = (*trainer, "--allow_config_changes")
  os.makedirs(workdir, exist_ok=True)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
  start = time.perf_counter()
  with open(os.path.join(workdir, LOG), "a+") as out:
    offset = out.tell()
    process = subprocess.run([*trainer, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    out.seek(offset)
    output = out.read()
  record = {"name": name, "args": args, "wall_s": earlier_s + time.perf_counter() - start}
  try:
    if process.returncode != 0:
      raise RuntimeError(error_line(output, process.returncode))
    record |= {"status": "done", "metrics": final_metrics(workdir)}
  except (RuntimeError, OSError, ValueError) as e:
    log(f"{name}: FAILED: {e}")
    return {**record, "status": "failed", "error": str(e), "skipped": False}
  with open(marker + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(marker + ".tmp", marker)  # Atomic: an interrupted write never looks finished.
  log(f"{name}: done in {record['wall_s']:.0f} s")
  return {**record, "skipped": False}


def run_sweep(
  spec: str,
  root: str,
  variants: dict[str, dict[str, Any]],
  *,
  fixed: dict[str, Any] | None = None,
  parallel: int = 1,
  trainer: Sequence[str] = TRAINER,
  log: Callable[[str], None] = print,
  extend: bool = False,
) -> list[dict[str, Any]]:
  """Runs every variant (name -> overrides, after the `fixed` ones) in `root/name`; returns their records."""
  root = os.path.abspath(root)

  def one(item):
    name, overrides = item
    workdir = os.path.join(root, name)
    return run_variant(
      name, trainer_flags(spec, workdir, {**(fixed or {}), **overrides}), workdir, trainer, log, extend
    )

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel))
  try:
    return list(pool.map(one, variants.items()))
  finally:  # After Ctrl-C start nothing new (the running trainers get the same SIGINT and stop).
    pool.shutdown(cancel_futures=True)
