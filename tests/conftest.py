"""Shared fixtures: the tiny mmshapes build, prepared once per session in a temporary data dir."""

import os
import subprocess
import sys

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
