"""Multi-process runs: 2 CPU processes on 127.0.0.1 joined by `jax.distributed` (gloo collectives)."""

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import main_in_process, run_python
from mmlearn import parallel
from mmlearn.errors import ConfigError
from mmlearn.train import loop

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.


def free_address() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"127.0.0.1:{s.getsockname()[1]}"


def run_processes(args_of, env_of=lambda process_id: {}, *, num_processes=2):
  """Starts one `python ARGS` per process at once (they wait for each other) and returns the results."""
  with ThreadPoolExecutor(num_processes) as pool:
    return list(pool.map(lambda i: run_python(args_of(i), env=env_of(i)), range(num_processes)))


def test_two_processes_match_a_single_process_run(data_dir):
  address = free_address()
  results = run_processes(
    lambda i: ["tests/parallel/multihost_check.py", data_dir, address, "2", str(i)],
    lambda i: {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  )
  for result in results:
    assert result.returncode == 0, result.stderr[-3000:]
  reports = [json.loads(result.stdout.strip().splitlines()[-1]) for result in results]
  assert [r["process_index"] for r in reports] == [0, 1]
  assert all(r["process_count"] == 2 and r["device_count"] == 4 for r in reports)
  assert reports[0]["checksum"] == reports[1]["checksum"]  # Both processes hold the same replica...
  assert all(r["shard_map_vs_pmap"] < 1e-5 for r in reports)  # ...in both modes...
  assert reports[0]["moved"] > 1e-3  # ...the steps changed the parameters, and 2 processes x 2 devices
  assert reports[0]["shard_map_vs_single"] < 1e-5  # give the parameters of one device on the whole
  assert reports[0]["pmap_vs_single"] < 1e-5  # global batch (a gradient sum, not mean, would be 4x off).


def test_main_in_two_processes_logs_once_and_resumes(tiny_config, data_dir, tmp_path):
  address = free_address()
  common = ["-m", "mmlearn.main", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
  common += [f"--config.dataset.data_dir={data_dir}", "--config.num_train_steps=4"]
  flags = [f"--coordinator_address={address}", "--num_processes=2"]
  first = run_processes(lambda i: [*common, *flags, f"--process_id={i}"])
  for result in first:
    assert result.returncode == 0, result.stderr[-3000:]
  assert "JAX process 1/2" in first[1].stderr
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [2, 4, 4]  # One writer: no line twice.
  assert len(os.listdir(tmp_path / "tensorboard")) == 1
  data_state = sorted(os.listdir(tmp_path / "checkpoints" / "4" / "data"))
  assert "process_0-of-2.json" in data_state and "process_1-of-2.json" in data_state

  # The same run again, configured by environment variables: every process restores step 4 (state and
  # its own data iterator), has nothing left to train, and evaluates the restored parameters.
  env = {"MMLEARN_COORDINATOR_ADDRESS": free_address(), "MMLEARN_NUM_PROCESSES": "2"}
  again = run_processes(lambda i: common, lambda i: {**env, "MMLEARN_PROCESS_ID": str(i)})
  for result in again:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from the checkpoint at step 4" in result.stderr
  evaluated = lines[2]
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # The evaluation at step 4 is replaced, not appended a second time.
  assert [line["step"] for line in lines] == [2, 4, 4, 4] and lines[2] == {"step": 4, "resumed_from": 4}
  assert lines[-1]["test/loss"] == pytest.approx(evaluated["test/loss"], abs=1e-6)
  assert lines[-1]["validation/accuracy"] == evaluated["validation/accuracy"]

  tiny_config.num_train_steps = 4  # One process cannot take over the iterator states of two.
  with pytest.raises(ValueError, match="written by 2 processes and this run has 1; resume it with 2"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize(
  "args, env, message",
  [
    (
      ["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
      {},
      "process_id must be in",
    ),
    (["--num_processes=2"], {}, "missing: --coordinator_address"),
    ([], {"MMLEARN_PROCESS_ID": "first"}, "$MMLEARN_PROCESS_ID must be an integer"),
  ],
)
def test_inconsistent_process_settings_give_one_error_line(capsys, monkeypatch, tmp_path, args, env, message):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  status, stderr = main_in_process(["--config=configs/tiny.py", f"--workdir={tmp_path}", *args], capsys)
  assert status == 1
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], stderr[-3000:]
  assert "Traceback" not in stderr


def test_no_process_settings_means_a_single_process_run():
  assert parallel.initialize_distributed() is False
  with pytest.raises(ConfigError, match=r"missing: --process_id \(\$MMLEARN_PROCESS_ID\)"):
    parallel.initialize_distributed("127.0.0.1:1234", 2)
  with pytest.raises(ConfigError, match="must be HOST:PORT"):
    parallel.initialize_distributed("127.0.0.1", 2, 0)
