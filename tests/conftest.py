"""Shared fixtures (the tiny mmshapes and AV-MNIST builds, once per session) and the suite's compile settings.

The suite's programs are tiny and run a few steps, so compiling them is most of the suite's time. Two
settings cut it without changing what any test asserts:
  - every test process (pytest-xdist workers and the subprocesses they start) shares one persistent JAX
    compilation cache, so a program compiled once (a tiny config's train step, say) is not compiled again
    by the next test or the next restart of a killed run; its key is the program and the compiler
    options, so a hit runs exactly the executable a fresh compile would build. `MMLEARN_TEST_JAX_CACHE`
    moves it ("" turns it off); by default it is `.pytest_cache/jax` in the repository.
  - XLA's CPU backend compiles with LLVM's optimisation level 1 instead of 2 (`MMLEARN_TEST_XLA_FLAGS`,
    "" to compile as in production): compiling is faster, and on tiny models running is no slower (level
    0 compiles faster still but runs several times slower). The maths is the same, and tests that
    compare runs make both under the same flags.
"""

import contextlib
import fcntl
import functools
import importlib
import logging as std_logging
import os
import pathlib
import pickle
import runpy
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_XLA_FLAGS = os.environ.setdefault("MMLEARN_TEST_XLA_FLAGS", "--xla_backend_optimization_level=1")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
JAX_CACHE = os.environ.setdefault("MMLEARN_TEST_JAX_CACHE", os.path.join(REPO, ".pytest_cache", "jax"))
if JAX_CACHE:
  # Environment variables reach the subprocesses; the config updates cover this process, whose JAX is
  # already imported. Every program is cached, however quickly it compiled.
  os.environ.update(JAX_COMPILATION_CACHE_DIR=JAX_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  jax.config.update("jax_compilation_cache_dir", JAX_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# A name for this test session that its pytest-xdist workers (and their subprocesses) inherit: the Slurm
# tests' shared cluster is keyed by it, and the session's end removes that cluster's directory in /tmp.
SESSION_ENV = "MMLEARN_TEST_SESSION"
_OWN_SESSION = pytest.StashKey[str]()  # Set in the process that named the session, which cleans up after it.


def pytest_configure(config):
  if SESSION_ENV not in os.environ:  # The controller (or a run without workers), before any worker starts.
    os.environ[SESSION_ENV] = f"{os.getpid()}-{time.time_ns()}"
    config.stash[_OWN_SESSION] = os.environ[SESSION_ENV]


def pytest_unconfigure(config):
  if session := config.stash.get(_OWN_SESSION, None):
    import slurm_cluster

    slurm_cluster.remove(session)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  from mmlearn import data

  directory = str(tmp_path_factory.mktemp("tfds"))
  data.load_sources("mmshapes", config="tiny", data_dir=directory)
  return directory


@pytest.fixture(scope="session")
def retrieval_tiny_data(tmp_path_factory):
  """(data dir, sources, info) of the mmshapes `retrieval_tiny` build (colour images, full captions)."""
  from mmlearn import data

  directory = str(tmp_path_factory.mktemp("retrieval_tiny"))
  sources, info = data.load_sources("mmshapes", config="retrieval_tiny", data_dir=directory)
  return directory, sources, info


@pytest.fixture(scope="session")
def mvae_tiny_run(retrieval_tiny_data, tmp_path_factory):
  """(workdir, final metrics) of `configs/mvae/tiny.py` trained on the `retrieval_tiny` build, once per
  test session: the MVAE tests read it, and generative imputation imputes with it."""
  from configs.mvae import tiny
  from mmlearn.train import loop

  def train_once(workdir):
    config = tiny.get_config()
    config.dataset.data_dir = retrieval_tiny_data[0]
    return loop.train_and_evaluate(config, str(workdir))

  return made_once(tmp_path_factory, "mvae_run", train_once)


# The real AV-MNIST raw files (MNIST idx + FSDD wavs); the tests that need them skip when they are absent.
AVMNIST_RAW = os.environ.get("MMLEARN_AVMNIST_DIR") or os.path.join(REPO, "..", "shared", "data", "avmnist")
AVMNIST_MISSING = (
  f"AV-MNIST raw files not found: set $MMLEARN_AVMNIST_DIR (tried {os.path.abspath(AVMNIST_RAW)})"
)


@contextlib.contextmanager
def shared_by_workers(tmp_path_factory, name: str):
  """The path NAME in the directory a session's pytest-xdist workers share, under an exclusive lock.

  What is costly to make and read-only once made is made by the first worker to take the lock; the others
  wait for it and find it there.
  """
  base = tmp_path_factory.getbasetemp()
  directory = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  with open(directory / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield directory / name


def made_once(tmp_path_factory, name: str, make: Callable[[pathlib.Path], Any]) -> tuple[pathlib.Path, Any]:
  """(the shared path NAME, `make(path)`'s result), `make` run by the first worker only.

  The result is pickled beside the path, where the other workers read it back.
  """
  with shared_by_workers(tmp_path_factory, name) as path:
    result_file = path.with_name(f"{name}.result.pkl")
    if not result_file.exists():
      result_file.write_bytes(pickle.dumps(make(path)))
  return path, pickle.loads(result_file.read_bytes())


@pytest.fixture(scope="session")
def avmnist_data_dir(tmp_path_factory) -> str:
  """A data dir holding the `tiny` AV-MNIST build (every split), built once per test session."""
  from mmlearn import data

  if not os.path.isdir(AVMNIST_RAW):
    pytest.skip(AVMNIST_MISSING)
  with shared_by_workers(tmp_path_factory, "avmnist_tfds") as directory:
    directory.mkdir(exist_ok=True)
    data.load_sources("avmnist", config="tiny", data_dir=str(directory), manual_dir=AVMNIST_RAW)
  return str(directory)


@pytest.fixture
def tiny_config(data_dir):
  from configs import tiny

  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config


def with_task(config, task: str):
  """`config` (a copy) for another task: its sections replace the old task's (`mmlearn.config.schema`)."""
  from mmlearn.config import schema

  config = config.copy_and_resolve_references()
  for name in schema.task_sections(config.task):
    del config[name]
  config.task = task
  for name, section in schema.task_sections(task).items():
    config[name] = section
  return config


def run_python(args: list[str], *, env: dict[str, str] | None = None, timeout: int = 300):
  """Runs `python ARGS` from the repo root in a fresh process (for flags and fake device counts)."""
  # The repository (mmlearn, configs) and tests/ (conftest's helpers, for the check scripts run by path).
  full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")]), **(env or {})}
  if env and "XLA_FLAGS" in env:  # Added to the suite's compile options, not replacing them.
    full_env["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {env['XLA_FLAGS']}"
    if "xla_force_host_platform_device_count" in env["XLA_FLAGS"]:  # Fake CPU devices, also beside a GPU.
      full_env.setdefault("JAX_PLATFORMS", "cpu")
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
  )


@contextlib.contextmanager
def own_flags():
  """Removes the absl flags defined inside the block (by importing a script or `mmlearn.main`) when it ends.

  Several entry points define `--config`; tests that import one in-process undefine its flags after use,
  so the next can define its own in the same worker.
  """
  from absl import flags

  before = set(flags.FLAGS)
  absl_level, unraisablehook = std_logging.getLogger("absl").level, sys.unraisablehook
  try:
    yield
  finally:
    flags.FLAGS.unparse_flags()  # This resets --verbosity, which sets the absl logger's level: restored.
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    std_logging.getLogger("absl").setLevel(absl_level)
    sys.unraisablehook = unraisablehook


def main_in_process(argv: list[str], capsys, *, script: str | None = None, stdout: bool = False):
  """(exit status, stderr) of `python -m mmlearn.main ARGV` (or `python SCRIPT ARGV`), run in this process;
  with `stdout`, (exit status, stderr, stdout).

  The command line's own work (absl's flag parsing, the config file, the exit status and its one
  `error:` line) without a fresh interpreter importing JAX again. The entry point is loaded afresh and
  its flags (with the `--config.*` overrides the parse defined) undefined after, so nothing leaks
  between calls. `mmlearn.main` parses with `mmlearn.cli.parse_flags`, a script with absl's parser, as
  `app.run` would.
  """
  from absl import flags

  capsys.readouterr()
  saved_argv, sys.argv = sys.argv, [script or "mmlearn.main", *argv]  # config_flags reads overrides here.
  status = 0
  try:
    with own_flags():
      if script is None:
        from mmlearn import cli

        sys.modules.pop("mmlearn.main", None)
        entry, parse = vars(importlib.import_module("mmlearn.main")), cli.parse_flags
      else:
        entry = runpy.run_path(os.path.join(REPO, script), run_name="in_process")  # Not "__main__".
        parse = flags.FLAGS
      entry["main"](parse(sys.argv))
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = saved_argv
    sys.modules.pop("mmlearn.main", None)
  captured = capsys.readouterr()
  return (status, captured.err, captured.out) if stdout else (status, captured.err)


def run_steps(par, task, tx, variables, batches, *, ema_decay=0.0, microbatch_size=0):
  """Trains from `variables` (`task.init`'s) with the real per-device `train_step` mapped by `par`.

  One step per batch. Returns the host copy of the final variables (BatchNorm statistics included)
  and the loss of every step.
  """
  from mmlearn.train.state import TrainState
  from mmlearn.train.step import train_step

  state = TrainState.create(dict(variables), tx, jax.random.PRNGKey(1), ema=ema_decay > 0)
  step = par.map(
    functools.partial(
      train_step, task=task, tx=tx, par=par, ema_decay=ema_decay, microbatch_size=microbatch_size
    ),
    sharded_args=(1,),
    out_layouts=(0, None),
  )
  state = par.place_state(state)
  losses = []
  for batch in batches:
    state, metrics = step(state, par.shard(batch))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state.variables()), losses


def max_diff(a, b) -> float:
  """Largest absolute difference between two pytrees of arrays with the same structure."""
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
