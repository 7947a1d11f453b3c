"""Shared fixtures: the tiny mmshapes build, prepared once per session in a temporary data dir."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  from mmlearn import data

  directory = str(tmp_path_factory.mktemp("tfds"))
  data.load_sources("mmshapes", config="tiny", data_dir=directory)
  return directory


@pytest.fixture
def tiny_config(data_dir):
  from configs import tiny

  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config


def run_python(args: list[str], *, env: dict[str, str] | None = None, timeout: int = 300):
  """Runs `python ARGS` from the repo root in a fresh process (for flags and fake device counts)."""
  full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
  )


def run_steps(par, task, tx, variables, batches, *, ema_decay=0.0):
  """Trains from `variables` (`task.init`'s) with the real per-device `train_step` mapped by `par`.

  One step per batch. Returns the host copy of the final variables (BatchNorm statistics included)
  and the loss of every step.
  """
  from mmlearn import train

  state = train.TrainState.create(dict(variables), tx, jax.random.PRNGKey(1), ema=ema_decay > 0)
  step = par.map(
    functools.partial(train.train_step, task=task, tx=tx, par=par, ema_decay=ema_decay),
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
