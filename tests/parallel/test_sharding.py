"""Sharded parameters (FSDP over the data-parallel devices) and sharding-independent checkpoints.

The 8-device checks run `tests/sharding_check.py` in a subprocess (the device count is fixed at start-up);
the layout rule, the config checks and the checkpoint checksum run here.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from conftest import made_once, run_python
from mmlearn import parallel
from mmlearn.errors import CheckpointError, ConfigError
from mmlearn.runs import checkpoint
from mmlearn.train.prefetch import IteratorState

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.

TOLERANCE = 1e-5  # Float32 summation order: 1 vs 8 devices, pmean vs reduce-scatter.


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
  """The 8-device run's figures, measured once for the session's workers (its tests may be split)."""

  def run(_):
    result = run_python(
      ["tests/parallel/sharding_check.py"], env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

  _, stdout = made_once(tmp_path_factory, "sharding_check", run)
  lines = stdout.strip().splitlines()
  print("\n".join(lines[:-1]))  # The bytes table (pytest -s shows it).
  return json.loads(lines[-1])


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_sharded_training_matches_a_single_device_run(measured, optimizer):
  diffs = measured[optimizer]
  assert diffs["step"] == 3 and diffs["moved"] > 1e-3  # The steps really changed the parameters...
  for what in ("params", "opt_state", "ema_params", "model_state", "metrics", "eval"):
    assert diffs[what] < TOLERANCE, (what, diffs)  # ...and the sharded run took the same ones.


def test_each_device_holds_one_nth_of_the_sharded_bytes(measured):
  rows = measured["bytes"]
  assert measured["split_exactly"]  # Every split leaf: one shard per device, 1/8 of its bytes each.
  for field in ("params", "opt_state", "ema_params"):
    assert rows[field]["replicated"] == rows[field]["total"]
    assert rows[field]["sharded"] < rows[field]["total"] / 8 * 1.1, (field, rows[field])  # Small ones stay.
  for field in ("model_state", "step", "rng"):  # Never split.
    assert rows[field]["sharded"] == rows[field]["total"]


def test_checkpoints_are_written_by_shard_and_restore_on_other_device_counts(measured):
  saved = measured["checkpoint"]
  assert saved["gathered_during_save"] == []  # No sharded array went through jax.device_get...
  assert saved["all_given_are_device_arrays"]  # ...orbax got the device arrays,
  assert saved["given_to_orbax_sharded"] == saved["sharded_leaves"] > 0  # still split,
  assert saved["chunk_shape"] == saved["shard_shape"] != saved["full_shape"]  # and wrote them by shard.
  for count in (4, 1):
    restored = saved["restores"][f"8_to_{count}"]
    assert restored == {"step": 3, "max_diff": 0.0, "layout_kept": True}
  assert saved["restores"]["8_to_host"] == {"max_diff": 0.0, "host_arrays": True}


def test_shard_dim_is_the_largest_divisible_dimension():
  assert parallel.shard_dim((3072, 256), 8, 1024) == 0
  assert parallel.shard_dim((64, 128), 8, 1024) == 1
  assert parallel.shard_dim((128, 128), 8, 1024) == 0  # First on ties.
  assert parallel.shard_dim((1, 16, 64), 8, 1024) == 2
  assert parallel.shard_dim((1000, 3), 8, 1024) == 0  # 1000 = 8 * 125.
  assert parallel.shard_dim((1001, 3), 8, 1024) is None  # No divisible dimension: replicated.
  assert parallel.shard_dim((64,), 8, 1024) is None  # Too small.
  assert parallel.shard_dim((3072, 256), 8, 0) is None  # 0 = replicate everything.


def parallel_config(mode="shard_map", shard_min_size=0, grad_clip_norm=0.0):
  return ml_collections.ConfigDict(
    {
      "parallel": {"mode": mode, "shard_min_size": shard_min_size},
      "optimizer": {"grad_clip_norm": grad_clip_norm},
    }
  )


def test_sharding_needs_shard_map():
  parallel.check_config(parallel_config())
  parallel.check_config(parallel_config(shard_min_size=1024))
  parallel.check_config(parallel_config("pmap", grad_clip_norm=1.0))
  parallel.check_config(parallel_config(shard_min_size=1024, grad_clip_norm=1.0))  # Clips by the global norm.
  with pytest.raises(ConfigError, match=r"shard_min_size=1024 shards parameters, which needs .*'shard_map'"):
    parallel.check_config(parallel_config("pmap", 1024))
  with pytest.raises(ConfigError, match="shard_min_size must be an integer >= 0"):
    parallel.check_config(parallel_config(shard_min_size=-1))
  with pytest.raises(ConfigError, match="unknown parallel.mode 'vmap'"):
    parallel.check_config(parallel_config("vmap"))
  with pytest.raises(ConfigError, match="needs parallel.mode='shard_map'"):
    parallel.DataParallel("pmap", shard_min_size=1024)


def test_checksum_sees_any_changed_or_moved_element_and_ignores_placement():
  state = {"w": np.arange(24, dtype=np.float32).reshape(4, 6), "step": np.int32(3)}
  record = checkpoint.state_checksum(state)
  assert record["['w']"].startswith("float32[4,6]:") and record["['step']"].startswith("int32[]:")
  assert checkpoint.state_checksum(jax.device_put(state)) == record  # Host or device: the same.
  moved = {**state, "w": state["w"][:, ::-1].copy()}
  changed = {**state, "w": state["w"].copy()}
  changed["w"][2, 3] = np.nextafter(changed["w"][2, 3], np.float32(np.inf))  # One bit.
  for other in (moved, changed):
    assert checkpoint.state_checksum(other)["['w']"] != record["['w']"]
  assert checkpoint.state_checks(state)[1] is None
  changed["w"][0, 0] = np.inf
  assert checkpoint.state_checks(changed)[1] == "['w']"


def test_a_record_that_does_not_match_is_corrupt(tmp_path):
  state = {"w": np.arange(24, dtype=np.float32).reshape(4, 6), "step": np.int32(3)}
  checkpointer = checkpoint.Checkpointer(str(tmp_path), keep=2)
  checkpointer.save(3, state, IteratorState({"next_index": 3}))
  checkpointer.close()
  path = os.path.join(tmp_path, "checkpoints", "3", "integrity", "metadata")
  with open(path) as f:
    record = json.load(f)
  assert set(record) == {"state_checksum", "data_sha256"}
  checkpointer = checkpoint.Checkpointer(str(tmp_path), keep=2)
  np.testing.assert_array_equal(checkpointer.restore(3, state)["w"], state["w"])
  record["state_checksum"]["['w']"] = record["state_checksum"]["['w']"][:-1] + "0"
  if record["state_checksum"]["['w']"] == checkpoint.state_checksum(state)["['w']"]:
    record["state_checksum"]["['w']"] = record["state_checksum"]["['w']"][:-1] + "1"
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(
    CheckpointError, match=r"checkpoints/3 is corrupt: its state does not match its checksum"
  ):
    checkpointer.restore(3, state)
  checkpointer.close()


def train_tiny(data_dir, workdir, devices, steps, shard_min_size, *extra):
  """`python -m mmlearn.main` on the tiny config, `devices` fake CPU devices; constant learning rate, so
  a run stopped at step 3 and resumed to 6 follows the same schedule as one run of 6 steps."""
  flags = [
    "-m", "mmlearn.main", "--config=configs/tiny.py", f"--workdir={workdir}",
    f"--config.dataset.data_dir={data_dir}", f"--config.num_train_steps={steps}",
    f"--config.parallel.shard_min_size={shard_min_size}", "--config.optimizer.schedule=constant",
    "--config.checkpoint_every_steps=3", "--config.optimizer.grad_clip_norm=0.1", *extra,
  ]  # fmt: skip
  result = run_python(flags, env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
  assert result.returncode == 0, result.stderr[-3000:]


def test_a_sharded_run_resumes_on_another_device_count(data_dir, tmp_path):
  """Through the trainer: 3 sharded steps on 8 devices, resumed to 6 on 4 devices, equal a replicated
  6-step run on 1 device (float tolerance: the summation order differs). Gradients are clipped (to a
  norm below the tiny model's), so the clipping norm must be the global one, not a shard's."""
  from mmlearn.runs import restore

  train_tiny(data_dir, tmp_path / "single", 1, 6, 0)
  train_tiny(data_dir, tmp_path / "resumed", 8, 3, 256)
  train_tiny(data_dir, tmp_path / "resumed", 4, 6, 256, "--allow_config_changes")
  finals = {}
  for name in ("single", "resumed"):
    config = restore.read_config(str(tmp_path / name))
    finals[name] = restore.load_run(config, str(tmp_path / name), ())[3]
  single, resumed = (jax.tree.leaves(finals[n]) for n in ("single", "resumed"))
  assert max(float(np.abs(a - b).max()) for a, b in zip(single, resumed, strict=True)) < TOLERANCE
  sharded = [leaf.size for leaf in single if leaf.size >= 256 and any(d % 8 == 0 for d in leaf.shape)]
  assert sharded  # The resumed run really had sharded leaves.
