"""Data parallelism on 4 fake CPU devices (a subprocess, since the device count is fixed at start-up)."""

import json

import pytest

from conftest import run_python

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.


def test_shard_map_and_pmap_match_a_single_device_run(data_dir):
  result = run_python(
    ["tests/parallel/multidevice_check.py", data_dir],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs["moved"] > 1e-3  # The steps really changed the parameters...
  assert diffs["shard_map_vs_single"] < 1e-5  # ...and all three runs agree (float tolerance):
  assert diffs["pmap_vs_single"] < 1e-5  # a gradient summed instead of averaged would be 4x off.
  assert diffs["shard_map_vs_pmap"] < 1e-5
  # With BatchNorm: parameters and running statistics agree too (statistics averaged over devices).
  assert diffs["bn_moved"] > 1e-3 and diffs["bn_stats_moved"] > 1e-3
  for key in ("bn_shard_map_vs_single", "bn_pmap_vs_single", "bn_shard_map_vs_pmap"):
    assert diffs[key] < 1e-5, diffs
