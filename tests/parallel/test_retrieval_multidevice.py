"""Contrastive losses on 4 fake CPU devices equal a single-device run on the same global batch."""

import json

import pytest

from conftest import run_python

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.


def test_global_batch_loss_and_gradients_match_a_single_device_run(data_dir):
  result = run_python(
    ["tests/parallel/retrieval_multidevice_check.py", data_dir],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  for loss in ("clip", "siglip"):
    tolerance = 1e-5 * max(1.0, diffs[f"{loss}/grad_scale"])
    assert diffs[f"{loss}/grad_scale"] > 0.1  # A real gradient...
    for mode in ("shard_map", "pmap"):
      assert diffs[f"{loss}/{mode}/loss"] < 1e-5 * diffs[f"{loss}/loss"]  # ...of the same global loss,
      assert diffs[f"{loss}/{mode}/grads"] < tolerance  # equal on 1 and 4 devices.
  # A gather that blocks the gradient would be caught: it changes the gradient by far more.
  assert diffs["siglip/stop_gradient_gather/grads"] > 1e-2
  # The evaluator's multi-device embedding of a split (padded last batch) is the direct one, in order.
  assert diffs["embed/single_vs_direct"] < 1e-5
  assert diffs["embed/shard_map_vs_direct"] < 1e-5
  assert diffs["embed/pmap_vs_direct"] < 1e-5
