"""Slurm: sweeps as jobs, requeue and resubmission resume, multi-process training under srun.

Against a real single-node Slurm started for the session (`tests/slurm_cluster.py`); the tests that need
it are skipped, with the reason, where Slurm is not installed. Jobs take 1 CPU per task.
"""

import csv
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import slurm_cluster

from conftest import REPO, SESSION_ENV, run_python
from mmlearn.runs import checkpoint

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.

TWO_LR = """
from configs import tiny


def get_config():
  config = tiny.get_config()
  config.num_train_steps = 4
  return config


def get_sweep(h):
  return h.chain([{"classification.fusion": "nope"}], h.sweep("optimizer.learning_rate", [0.05, 0.1]))
"""
GOOD, OTHER, BAD = "optimizer.learning_rate=0.05", "optimizer.learning_rate=0.1", "classification.fusion=nope"
ONE_LR = TWO_LR.replace('[{"classification.fusion": "nope"}], ', "").replace(
  "[0.05, 0.1]", "[0.05]"
)  # GOOD alone.


@pytest.fixture(scope="session")
def cluster():
  if reason := slurm_cluster.missing():
    pytest.skip(reason)
  with slurm_cluster.shared(os.environ[SESSION_ENV]) as c:
    yield c


@pytest.fixture
def background():
  """Processes a test starts and waits for later; killed at teardown if a failing test left them running."""
  processes = []
  yield processes
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait()


def sweep(tmp_path, config: str, *flags: str, cluster=None, data_dir=None, wait=True):
  """Runs scripts/sweep.py with `--workdir=tmp_path/root` against the test cluster."""
  env = {"SLURM_CONF": cluster.conf} if cluster else {}
  env |= {"MMLEARN_DATA_DIR": data_dir} if data_dir else {}
  args = ["scripts/sweep.py", f"--config={config}", f"--workdir={tmp_path / 'root'}", *flags]
  if wait:
    return run_python(args, env=env)
  out = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 (closed with the process, by the caller)
  return subprocess.Popen(
    [sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, **env}, stdout=out, stderr=out
  )


def job_id(workdir) -> str:
  return str(json.loads((workdir / "slurm_job.json").read_text())["job_id"])


def finished_jobs(cluster) -> dict[str, list[str]]:
  """Job id -> the states `sacct -c` (the job completion log) recorded for it, in order."""
  lines = cluster.command("sacct", "-c", "-n", "-P", "-o", "JobID,State").stdout.split()
  states = {}
  for line in lines:
    states.setdefault(line.split("|")[0], []).append(line.split("|")[1])
  return states


def test_a_sweep_of_slurm_jobs_is_summarised_and_a_rerun_skips_the_finished(cluster, data_dir, tmp_path):
  (tmp_path / "two_lr.py").write_text(TWO_LR)
  result = sweep(tmp_path, f"{tmp_path}/two_lr.py", "--launcher=slurm", cluster=cluster, data_dir=data_dir)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.splitlines()[-1].startswith("error: 1 of 3 variants failed")
  root = tmp_path / "root"
  ids = {v: job_id(root / v) for v in (GOOD, OTHER, BAD)}
  assert len(set(ids.values())) == 3 and all(
    f"submitted as Slurm job {i}" in result.stdout for i in ids.values()
  )
  assert all(finished_jobs(cluster)[i] == ["COMPLETED"] for i in ids.values())  # Ran by Slurm, once each.
  rows = {r["variant"]: r for r in csv.DictReader(open(root / "summary.csv"))}  # noqa: SIM115
  assert [rows[v]["status"] for v in (GOOD, OTHER, BAD)] == ["done", "done", "failed"]
  assert rows[BAD]["error"].startswith("error: ConfigError: unknown fusion 'nope'")  # The job's error line.
  assert "failed: ConfigError: unknown fusion 'nope'" in (root / "summary.md").read_text()
  for v in (GOOD, OTHER):
    final = json.loads((root / v / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 4 and float(rows[v]["test/accuracy"]) == final["test/accuracy"]
    assert json.loads((root / v / "done.json").read_text())["metrics"] == final
  assert json.loads((root / GOOD / "config.json").read_text())["optimizer"]["learning_rate"] == 0.05

  before = {v: (root / v / "metrics.jsonl").read_text() for v in (GOOD, OTHER)}
  again = sweep(tmp_path, f"{tmp_path}/two_lr.py", "--launcher=slurm", cluster=cluster, data_dir=data_dir)
  assert again.returncode == 1, again.stderr[-3000:]
  assert (
    f"{GOOD}: finished before, skipped" in again.stdout
    and f"{OTHER}: finished before, skipped" in again.stdout
  )
  assert {v: (root / v / "metrics.jsonl").read_text() for v in (GOOD, OTHER)} == before
  assert job_id(root / GOOD) == ids[GOOD] and job_id(root / OTHER) == ids[OTHER]  # Not submitted again.
  assert job_id(root / BAD) != ids[BAD]  # The failed one was.


LONG = [
  "--override=num_train_steps=1000",
  "--override=checkpoint_every_steps=100",
  "--override=log_every_steps=100",
]


def latest_checkpoint(workdir) -> int:
  names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").is_dir() else []
  return max((int(n) for n in names if n.isdigit()), default=0)  # Not orbax's unfinished `N.orbax-...`.


def wait_for(condition, what: str, timeout: float = 180):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


def params_at(workdir):
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=checkpoint.ITEMS)
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  return step, state["params"]


def test_an_interrupted_job_resumes_from_its_checkpoint_to_the_same_parameters(
  cluster, data_dir, tmp_path, background
):
  """Signalled as at its time limit, the job is requeued and resumes; cancelled, a rerun resubmits it.

  Both restarts resume from the latest checkpoint and end bitwise where an uninterrupted run ends.
  """
  (tmp_path / "one.py").write_text(ONE_LR)
  config = f"{tmp_path}/one.py"
  reference_dir = tmp_path / "reference"
  reference = subprocess.Popen(  # The same variant, uninterrupted, on the local launcher, meanwhile.
    [sys.executable, "scripts/sweep.py", f"--config={config}", f"--workdir={reference_dir}", *LONG],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO, "MMLEARN_DATA_DIR": data_dir},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  workdir = tmp_path / "root" / GOOD
  process = sweep(tmp_path, config, "--launcher=slurm", *LONG, cluster=cluster, data_dir=data_dir, wait=False)
  background += [reference, process]
  wait_for(lambda: latest_checkpoint(workdir) >= 100, "the first checkpoint")
  first = job_id(workdir)
  cluster.command("scancel", "--signal=USR2", first)  # What Slurm sends ahead of the time limit.
  preempted_at = latest_checkpoint(workdir)
  assert preempted_at < 1000, "the job finished before it could be signalled"
  wait_for(lambda: latest_checkpoint(workdir) > preempted_at + 100, "the requeued job's checkpoints")
  assert job_id(workdir) == first  # Requeued by submitit: the same job, started again.
  cluster.command("scancel", first)
  assert latest_checkpoint(workdir) < 1000, "the job finished before it could be cancelled"
  assert process.wait(timeout=120) == 1
  log = (tmp_path / "sweep.log").read_text()
  assert f"Slurm job {first} ended CANCELLED" in log, log[-3000:]

  result = sweep(tmp_path, config, "--launcher=slurm", *LONG, cluster=cluster, data_dir=data_dir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert job_id(workdir) != first and f"{GOOD}: cut off, submitted" in result.stdout
  assert finished_jobs(cluster)[first] == ["PENDING", "CANCELLED"]  # Requeued, then cancelled.
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  resumed = [line["resumed_from"] for line in lines if "resumed_from" in line]
  assert len(resumed) == 2 and 100 <= resumed[0] < resumed[1] < 1000, resumed
  assert reference.wait(timeout=300) == 0
  step, params = params_at(workdir)
  reference_step, reference_params = params_at(reference_dir / GOOD)
  assert step == reference_step == 1000
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_two_task_variant_runs_main_distributed_in_both_tasks(cluster, data_dir, tmp_path):
  (tmp_path / "one.py").write_text(ONE_LR)
  flags = ["--launcher=slurm", "--tasks_per_node=2"]
  result = sweep(tmp_path, f"{tmp_path}/one.py", *flags, cluster=cluster, data_dir=data_dir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  workdir = tmp_path / "root" / GOOD
  assert "JAX process 0/2" in (workdir / "log.txt").read_text()  # Joined by JAX from Slurm's variables.
  assert "JAX process 1/2" in (workdir / "log.task1.txt").read_text()
  data_state = sorted(os.listdir(workdir / "checkpoints" / "4" / "data"))
  assert "process_0-of-2.json" in data_state and "process_1-of-2.json" in data_state
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [2, 4, 4]  # One writer.
  assert json.loads((workdir / "done.json").read_text())["metrics"] == lines[-1]


# One task of `srun --ntasks=2`: JAX joins the tasks from Slurm's variables; the processes train on the
# same global batches (each feeds its own rows), and process 0 also trains them on one device alone.
SRUN_CHECK = """
import json, sys
import jax
from configs import tiny
from conftest import max_diff, run_steps
from mmlearn import data, optim, parallel
from mmlearn.data import pipeline
from mmlearn.tasks import TASKS


assert parallel.initialize_distributed(auto=True)
config = tiny.get_config()
config.optimizer.warmup_steps = 0
assert jax.process_count() == 2
sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=sys.argv[1], splits=("train",))
task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
# The single-process pipeline's batches, the same on every process; each feeds its own rows.
it = pipeline.train_iterator(
  sources["train"], batch_size=32, seed=0, max_tokens=16, process_index=0, process_count=1
)
batches = [next(it) for _ in range(3)]
rows = slice(jax.process_index() * 16, (jax.process_index() + 1) * 16)
mine = [jax.tree.map(lambda x: x[rows], b) for b in batches]
tx = optim.make_optimizer(config.optimizer, 10)
params = task.init(jax.random.PRNGKey(0), batches[0])
trained = run_steps(parallel.DataParallel(), task, tx, params, mine)[0]
report = {"process": jax.process_index(), "count": jax.process_count(), "devices": jax.device_count()}
if jax.process_index() == 0:
  single = run_steps(parallel.DataParallel(devices=jax.local_devices()[:1]), task, tx, params, batches)[0]
  report |= {"vs_single": max_diff(trained, single), "moved": max_diff(single, params)}
print(json.dumps(report))
"""


def test_two_srun_tasks_train_like_one_process_on_the_same_global_batches(cluster, data_dir, tmp_path):
  (tmp_path / "srun_check.py").write_text(SRUN_CHECK)
  env = {**cluster.env, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
  command = [
    "srun",
    "--ntasks=2",
    "--cpus-per-task=1",
    sys.executable,
    str(tmp_path / "srun_check.py"),
    data_dir,
  ]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  reports.sort(key=lambda r: r["process"])
  assert [(r["process"], r["count"], r["devices"]) for r in reports] == [(0, 2, 2), (1, 2, 2)]
  assert reports[0]["moved"] > 1e-3  # The steps changed the parameters...
  # ...and two processes' gradient mean over the global batch equals one device's, up to float32 rounding
  # of the sums taken in another order.
  assert reports[0]["vs_single"] < 1e-5


def test_dry_run_lists_the_jobs_without_slurm(tmp_path):
  (tmp_path / "two_lr.py").write_text(
    TWO_LR + "\n\ndef get_launcher():\n  return {'partition': 'gpu', 'time_min': 30}\n"
  )
  flags = ["--launcher=slurm", "--dry_run", "--tasks_per_node=2", "--time_min=20", "--override=num_epochs=2"]
  result = sweep(tmp_path, f"{tmp_path}/two_lr.py", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[-1] == "3 variants (Slurm jobs)" and f"{GOOD} (new)" in lines
  sbatch = next(line for line in lines if "sbatch" in line)
  assert (
    "--partition=gpu" in sbatch and "--time=20" in sbatch and "--ntasks-per-node=2" in sbatch
  )  # Flag wins.
  assert "srun (2 tasks): python -m mmlearn.main --distributed --config=" in result.stdout
  assert "--config.num_epochs=2" in result.stdout and not os.path.exists(tmp_path / "root")


@pytest.mark.parametrize(
  "flags, launcher_section, message",
  [
    (["--launcher=pbs"], None, "unknown launcher 'pbs'; known: local, slurm"),
    (["--partition=gpu"], None, "--partition only apply with --launcher=slurm"),
    (["--launcher=slurm", "--nodes=0"], None, "nodes must be an integer of at least 1, got 0"),
    (["--launcher=slurm", "--partition=a,b"], None, "partition must be one Slurm partition name"),
    (["--launcher=slurm", "--parallel=2"], None, "--parallel is for --launcher=local"),
    (["--launcher=slurm"], "{'gpus': 1}", "unknown launcher setting 'gpus' in get_launcher()"),
    (["--launcher=slurm"], "{'time_min': '1h'}", "time_min must be an integer of at least 1, got '1h'"),
  ],
)
def test_bad_launcher_settings_give_one_error_line(tmp_path, flags, launcher_section, message):
  text = TWO_LR + (f"\n\ndef get_launcher():\n  return {launcher_section}\n" if launcher_section else "")
  (tmp_path / "two_lr.py").write_text(text)
  result = sweep(tmp_path, f"{tmp_path}/two_lr.py", *flags)
  assert result.returncode == 1
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("error: ConfigError: ") and message in line, line
  assert not os.path.exists(tmp_path / "root")


def test_an_unknown_partition_is_one_error_line_before_anything_is_submitted(cluster, tmp_path):
  (tmp_path / "two_lr.py").write_text(TWO_LR)
  result = sweep(tmp_path, f"{tmp_path}/two_lr.py", "--launcher=slurm", "--partition=nope", cluster=cluster)
  assert result.returncode == 1
  [line] = result.stderr.strip().splitlines()
  assert line == "error: ConfigError: no Slurm partition 'nope'; this cluster has debug", line
  assert not list((tmp_path / "root").iterdir())  # No variant directory: nothing was submitted.
