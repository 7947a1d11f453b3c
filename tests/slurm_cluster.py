"""A real single-node Slurm on this machine for the Slurm tests: munged, slurmctld and slurmd.

Everything lives in one directory (munge key and socket, `slurm.conf`, state, spool, logs), and the
daemons listen on free ports, so nothing in /etc is touched and a system Slurm, if any, is left alone.
The node is this host with its real CPU count and memory (`slurmd -C`); jobs are tracked by process
tree, without cgroups (`proctrack/linuxproc`, `task/none`), which containers often lack. There is no
accounting database: finished jobs go to a `jobcomp/filetxt` file, which `sacct -c` reads. A requeued
job may start again after `cred_expire` (10 s here, Slurm's default 120 s), so requeue tests stay short.

pytest-xdist workers share one cluster: the first to need it starts it, and the last to leave stops it
(a reference count in the cluster's directory, under a lock); the session's end deletes the directory
(`tests/conftest.py`).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time

PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}

CONF = """\
ClusterName=mmlearn
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=10
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
MailProg=/bin/true
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> str | None:
  """Why a cluster cannot be started here (a missing program, not root), or None."""
  if absent := [f"{p} ({pkg})" for p, pkg in PACKAGES.items() if shutil.which(p) is None]:
    return f"Slurm is not installed: missing {', '.join(absent)}; apt-get install slurm-wlm munge"
  if os.geteuid() != 0:
    return "starting slurmctld and slurmd here needs root (they run as SlurmUser=root)"
  return None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Cluster:
  """The daemons of one single-node cluster in `directory`; `env` points Slurm's commands at it."""

  def __init__(self, directory: str):
    self.dir = directory
    self.conf = os.path.join(directory, "slurm.conf")
    self.env = {**os.environ, "SLURM_CONF": self.conf}
    self.host = socket.gethostname().split(".")[0]

  def command(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)

  def start(self, timeout: float = 60) -> None:
    for sub in ("state", "spool"):  # Fresh: a restarted controller must not recover an old one's jobs.
      shutil.rmtree(os.path.join(self.dir, sub), ignore_errors=True)
      os.makedirs(os.path.join(self.dir, sub))
    key = os.path.join(self.dir, "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400), "wb") as f:
      f.write(os.urandom(1024))
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    node = node.splitlines()[0].replace(f"NodeName={node.split()[0].split('=')[1]}", f"NodeName={self.host}")
    with open(self.conf, "w") as f:
      f.write(
        CONF.format(host=self.host, dir=self.dir, node=node, ctld_port=free_port(), slurmd_port=free_port())
      )
    d = self.dir
    self._daemon("munged", f"--key-file={key}", f"--socket={d}/munge.socket", f"--pid-file={d}/munged.pid")
    self._daemon("slurmctld", "-f", self.conf)
    self._daemon("slurmd", "-f", self.conf, "-N", self.host)
    deadline = time.monotonic() + timeout
    while (state := self.node_state()) != "idle":
      if time.monotonic() > deadline:
        raise RuntimeError(f"the Slurm node is {state!r}, not idle, after {timeout} s; see {d}/*.log")
      time.sleep(0.5)

  def _daemon(self, name: str, *args: str) -> None:
    """Starts a daemon in the background (each forks and writes its pid file) and waits for its pid."""
    extra = [f"--log-file={self.dir}/munged.log", f"--seed-file={self.dir}/munged.seed"]
    argv = [name, *args, *(extra if name == "munged" else [])]
    subprocess.run(argv, env=self.env, check=True, capture_output=True, timeout=30)
    for _ in range(100):
      if self.pid(name):
        return
      time.sleep(0.1)
    raise RuntimeError(f"{name} did not start; see {self.dir}/{name}.log")

  def pid(self, name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
      with open(os.path.join(self.dir, f"{name}.pid")) as f:
        pid = int(f.read().strip())
      os.kill(pid, 0)
      return pid
    return None

  def node_state(self) -> str:
    result = self.command("sinfo", "-h", "-n", self.host, "-o", "%T")
    return result.stdout.strip() if result.returncode == 0 else result.stderr.strip()

  def stop(self, timeout: float = 30) -> None:
    """Cancels every job, waits for them to leave the node, then stops slurmd, slurmctld and munged."""
    if self.pid("slurmctld"):
      self.command("scancel", "--full", "--user=root")
      deadline = time.monotonic() + timeout
      while self.command("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):
      if pid := self.pid(name):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
          if not self.pid(name):
            break
          time.sleep(0.1)


def session_directory(session: str) -> str:
  """Where the cluster of a test session (any unique string) lives.

  In /tmp, not under pytest's private (0700) directories: munged serves only a socket whose parent
  directories everyone may enter.
  """
  return f"/tmp/mmlearn-slurm-{hashlib.sha1(session.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def shared(session: str):
  """The cluster of a test session, started by its first user, stopped by its last."""
  directory = session_directory(session)
  os.makedirs(directory, mode=0o755, exist_ok=True)
  cluster = Cluster(directory)
  count_file = os.path.join(directory, "users.json")
  with _locked(directory):
    users = _read_count(count_file)
    if users == 0 or not cluster.pid("slurmctld"):
      cluster.stop()
      cluster.start()
    _write_count(count_file, users + 1)
  try:
    yield cluster
  finally:
    with _locked(directory):
      users = _read_count(count_file) - 1
      _write_count(count_file, users)
      if users == 0:
        cluster.stop()


def remove(session: str) -> None:
  """Stops the session's cluster if a crashed worker left it running, and deletes its directory."""
  directory = session_directory(session)
  if os.path.isdir(directory):
    Cluster(directory).stop()
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: str):
  with open(os.path.join(directory, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _read_count(path: str) -> int:
  with contextlib.suppress(OSError, ValueError), open(path) as f:
    return int(json.load(f))
  return 0


def _write_count(path: str, count: int) -> None:
  with open(path, "w") as f:
    json.dump(count, f)
