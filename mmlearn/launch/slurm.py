"""Runs sweep variants as Slurm jobs (through submitit): the local launcher's contract, on a cluster.

Each variant is one job whose task 0 runs `launcher.run_variant`, the local launcher's own code: it
skips a finished workdir, trains (resuming from the latest checkpoint), keeps the trainer's output in
`log.txt`, and writes `done.json` only after the trainer exits 0. So `done.json` is written on the
cluster even if the submitting process is gone, and the record that comes back (status, final metrics or
the trainer's `error:` line) is the one the local launcher would have made.

A job of `nodes * tasks_per_node > 1` tasks runs `python -m mmlearn.main --distributed` in every task:
JAX reads the coordinator (the first node), the process count and each process's id from Slurm's
environment. Tasks other than 0 log to `log.task<N>.txt`.

Preemption and time limits: Slurm signals the job (SIGUSR2, 90 s ahead of its time limit); submitit
then requeues it (`Variant.checkpoint`), at most `max_requeues` times for time limits, and the trainer,
started again in the same workdir, resumes from its latest checkpoint.

Jobs are watched with `squeue`, not `sacct`, so clusters without an accounting database work too. The
job id is kept in `WORKDIR/slurm_job.json`: re-running a sweep while its job is queued or running waits
for that job instead of submitting a second one into the same workdir.
"""

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mmlearn.config import files as config_files
from mmlearn.errors import ConfigError
from mmlearn.launch import local as launcher

JOB_FILE = "slurm_job.json"
# States a job can still leave (squeue's long names); any other state, or none, means it ended.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
ACTIVE |= {"RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "RESV_DEL_HOLD"}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every job of a sweep asks Slurm for; `partition` None means the cluster's default."""

  partition: str | None = None
  time_min: int = 60
  nodes: int = 1
  tasks_per_node: int = 1
  cpus_per_task: int = 1
  gpus_per_task: int = 0
  max_requeues: int = 3

  @property
  def tasks(self) -> int:
    return self.nodes * self.tasks_per_node

  def sbatch(self, job_name: str) -> dict[str, Any]:
    """The parameters of `submitit.SlurmExecutor.update_parameters` (sbatch's flags, `_` for `-`)."""
    params = {
      "job_name": job_name,
      "time": self.time_min,
      "nodes": self.nodes,
      "ntasks_per_node": self.tasks_per_node,
      "cpus_per_task": self.cpus_per_task,
    }
    if self.partition:
      params["partition"] = self.partition
    if self.gpus_per_task:
      params["gpus_per_task"] = self.gpus_per_task
    return params


MINIMUM = {"time_min": 1, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "gpus_per_task": 0}
MINIMUM["max_requeues"] = 0


def settings(spec: str, flag_values: dict[str, Any]) -> Settings:
  """The sweep file's `get_launcher()` dict (if it has one), then the flags that were set, over the defaults.

  Checked here, before anything is submitted: an unknown key or a value of the wrong type or range is a
  `ConfigError`. Whether the partition exists is checked against the cluster by `check_cluster`.
  """
  module = config_files.load_module(config_files.split_spec(spec)[0])
  section = module.get_launcher() if callable(getattr(module, "get_launcher", None)) else {}
  if not isinstance(section, dict):
    raise ConfigError(f"get_launcher() returned {section!r}, not a dict of launcher settings")
  values = {**section, **{k: v for k, v in flag_values.items() if v is not None}}
  known = [f.name for f in dataclasses.fields(Settings)]
  if unknown := sorted(values.keys() - set(known)):
    raise ConfigError(f"unknown launcher setting {unknown[0]!r} in get_launcher(); known: {', '.join(known)}")
  for key, value in values.items():
    if key == "partition":
      if not isinstance(value, str) or not value.strip() or any(c.isspace() or c == "," for c in value):
        raise ConfigError(f"partition must be one Slurm partition name, got {value!r}")
    elif not isinstance(value, int) or isinstance(value, bool) or value < MINIMUM[key]:
      raise ConfigError(f"{key} must be an integer of at least {MINIMUM[key]}, got {value!r}")
  return Settings(**values)


def slurm(*args: str) -> str:
  """Runs a Slurm command; its error (or a missing command) is one line: nothing can be submitted."""
  if shutil.which(args[0]) is None:
    raise ConfigError(f"--launcher=slurm needs Slurm's {args[0]} on PATH (is this a Slurm cluster?)")
  result = subprocess.run(args, capture_output=True, text=True, timeout=120)
  if result.returncode != 0:
    raise ConfigError(f"{args[0]} failed: {result.stderr.strip() or f'exit status {result.returncode}'}")
  return result.stdout


def check_cluster(s: Settings) -> None:
  """Fails before submitting anything if Slurm is unreachable or has no such partition."""
  partitions = {p.rstrip("*") for p in slurm("sinfo", "-a", "-h", "-o", "%P").split()}
  if s.partition and s.partition not in partitions:
    raise ConfigError(f"no Slurm partition {s.partition!r}; this cluster has {', '.join(sorted(partitions))}")


def trainer(s: Settings) -> tuple[str, ...]:
  return (*launcher.TRAINER, "--distributed") if s.tasks > 1 else launcher.TRAINER


def describe(name: str, args: list[str], s: Settings) -> str:
  """The job as sbatch and srun flags, for `--dry_run`."""
  sbatch = " ".join(f"--{k.replace('_', '-')}={v}" for k, v in s.sbatch(name).items())
  command = shlex.join(["python", "-m", "mmlearn.main", *trainer(s)[3:], *args])
  return f"sbatch {sbatch}\n  srun ({s.tasks} task{'s' * (s.tasks > 1)}): {command}"


class Variant:
  """What a job runs in each of its tasks (pickled by submitit, so it holds only strings)."""

  def __init__(self, name: str, args: list[str], workdir: str, trainer: tuple[str, ...]):
    self.name, self.args, self.workdir, self.trainer = name, args, workdir, trainer

  def __call__(self) -> dict[str, Any]:
    import submitit

    rank = submitit.JobEnvironment().global_rank
    if rank == 0:
      return launcher.run_variant(self.name, self.args, self.workdir, self.trainer, print)
    if launcher.state(self.workdir) == "finished":  # Requeued after task 0 finished: nothing to join.
      return {"status": "done"}
    env = {
      **os.environ,
      "PYTHONPATH": os.pathsep.join(filter(None, [launcher.REPO, os.environ.get("PYTHONPATH")])),
    }
    with open(os.path.join(self.workdir, f"log.task{rank}.txt"), "a") as out:
      command = [*self.trainer, *self.args]
      code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env).returncode
    return {"status": "done" if code == 0 else "failed", "returncode": code}

  def checkpoint(self, *args, **kwargs):
    """Called by submitit on preemption or near the time limit: requeue the same call (it resumes)."""
    import submitit

    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def job_states(job_ids: list[str]) -> dict[str, str]:
  """Each job's state as squeue reports it (finished jobs stay listed for a few minutes), or none."""
  if not job_ids:
    return {}
  listing = slurm("squeue", "-h", "-t", "all", "-o", "%i|%T")
  states = dict(line.split("|", 1) for line in listing.splitlines() if "|" in line)
  return {job_id: states.get(job_id, "") for job_id in job_ids}


def submit(name: str, args: list[str], workdir: str, s: Settings, log: Callable[[str], None]):
  """Submits one variant (or finds its job still queued or running) and returns the submitit job."""
  import submitit
  from submitit.core.utils import FailedJobError

  folder = os.path.join(workdir, "slurm")
  job_file = os.path.join(workdir, JOB_FILE)
  if os.path.exists(job_file):
    with open(job_file) as f:
      job_id = str(json.load(f)["job_id"])
    if (state := job_states([job_id])[job_id]) in ACTIVE:
      log(f"{name}: Slurm job {job_id} is already {state}; waiting for it")
      return submitit.SlurmJob(folder=folder, job_id=job_id)
  os.makedirs(workdir, exist_ok=True)
  executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=s.max_requeues)
  pythonpath = os.pathsep.join([launcher.REPO, "${PYTHONPATH:-}"])
  executor.update_parameters(**s.sbatch(name), setup=[f"export PYTHONPATH={pythonpath}"])
  try:
    job = executor.submit(Variant(name, args, workdir, trainer(s)))
  except FailedJobError as e:
    lines = [line for line in str(e).splitlines() if "error" in line.lower()] or str(e).splitlines()
    raise ConfigError(f"Slurm refused the job of {name}: {lines[-1].strip()}") from None
  with open(job_file, "w") as f:
    json.dump({"job_id": job.job_id, "submitted": time.time()}, f)
  log(f"{name}: {launcher.state(workdir)}, submitted as Slurm job {job.job_id}")
  return submitit.SlurmJob(folder=folder, job_id=job.job_id)  # Task 0's view: its result is the record.


def outcome(name: str, args: list[str], job, state: str) -> dict[str, Any]:
  """The record of an ended job: task 0's (read from submitit's result file), else how the job ended.

  A job that Slurm ended (cancelled, timed out, out of memory, node failure) is reported as such, even
  if task 0 wrote a record while it was being killed: its trainer's last line would not say why.
  """
  record = {"name": name, "args": args, "wall_s": 0.0, "skipped": False, "job_id": job.job_id}
  for _ in range(20):  # A result written on another node can take a moment to show on a shared disk.
    if job.paths.result_pickle.exists() or state != "COMPLETED":
      break
    time.sleep(0.5)
  if state not in ("COMPLETED", "") or not job.paths.result_pickle.exists():
    error = f"error: Slurm job {job.job_id} ended {state or 'and left the queue'} (log: {job.paths.stderr})"
    return {**record, "status": "failed", "error": error}
  try:
    return {**record, **job.result()}
  except Exception as e:  # A bug in the job's Python (not in the trainer, whose errors are records).
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return {**record, "status": "failed", "error": lines[-1] if lines else repr(e)}


def run_sweep(
  spec: str,
  root: str,
  variants: dict[str, dict[str, Any]],
  *,
  settings: Settings,
  fixed: dict[str, Any] | None = None,
  log: Callable[[str], None] = print,
  poll_s: float = 2.0,
) -> list[dict[str, Any]]:
  """Submits every unfinished variant, waits for all their jobs and returns the records, in order."""
  check_cluster(settings)
  root = os.path.abspath(root)
  records, jobs = {}, {}
  for name, overrides in variants.items():
    workdir = os.path.join(root, name)
    args = launcher.trainer_flags(spec, workdir, {**(fixed or {}), **overrides})
    if launcher.state(workdir) == "finished":  # Reads done.json back without training, as locally.
      records[name] = launcher.run_variant(name, args, workdir, (), log)
    else:
      jobs[name] = (args, submit(name, args, workdir, settings, log))
  delay, seen, misses = poll_s, {}, 0
  try:
    while pending := [name for name in jobs if name not in records]:
      try:
        states = job_states([jobs[name][1].job_id for name in pending])
        misses = 0
      except ConfigError as e:  # A controller restarting or busy: the jobs go on, so ask again.
        if (misses := misses + 1) > 5:
          raise
        log(f"warning: {e}; asking again in {delay:.0f} s")
        time.sleep(delay)
        continue
      for name in pending:
        args, job = jobs[name]
        state = states[job.job_id]
        if state != seen.get(name):
          seen[name], delay = state, poll_s
          log(f"{name}: Slurm job {job.job_id} {state or 'left the queue'}")
        if state not in ACTIVE:
          records[name] = outcome(name, args, job, state)
          record = records[name]
          log(f"{name}: {'done' if record['status'] == 'done' else 'FAILED: ' + record['error']}")
      if len(records) < len(variants):
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
  except KeyboardInterrupt:
    print("interrupted: the jobs keep running; re-run the same command to wait for them", file=sys.stderr)
    raise
  return [records[name] for name in variants]
