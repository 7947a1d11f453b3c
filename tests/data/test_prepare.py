"""Preparation without TensorFlow: shard by shard, resumable after kill -9, one at a time, a full disk
reported by shard. The builder and command are in prepare_check.py."""

import os
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from prepare_check import EXAMPLES_PER_SHARD, SIZES, Counting, make_example, prepare_counting

from conftest import REPO, run_python
from mmlearn.data import prepare
from mmlearn.errors import DataError

CHECK = os.path.join(REPO, "tests", "data", "prepare_check.py")


def prepared(data_dir) -> str:
  return os.path.join(str(data_dir), "counting", "1.0.0")


def files(directory: str) -> dict[str, bytes]:
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
  """The files of an uninterrupted preparation, in this process."""
  data_dir = tmp_path_factory.mktemp("reference")
  prepare_counting(str(data_dir))
  return files(prepared(data_dir))


def test_splits_are_written_in_order_shard_by_shard_and_read_back(reference, tmp_path):
  train_shards = [n for n in reference if n.startswith("counting-train.array_record-")]
  assert len(train_shards) == -(-SIZES["train"] // EXAMPLES_PER_SHARD)  # A split in many small shards.
  assert not [n for n in reference if ".tmp" in n or n.endswith(".lengths.json")]
  builder = prepare_counting(str(tmp_path))  # Prepared again: the same bytes.
  assert files(prepared(tmp_path)) == reference
  validation = builder.as_data_source("validation")
  for i in (0, 17, SIZES["validation"] - 1):  # Element i is the plan's i-th item.
    example, expected = validation[i], make_example(SIZES["train"] + i)
    assert np.array_equal(example["x"], expected["x"]) and example["text"] == expected["text"].encode()


def test_a_memory_independent_preparation_needs_no_tensorflow(reference, tmp_path):
  result = run_python([CHECK, str(tmp_path)])
  assert result.returncode == 0, result.stderr
  assert "tensorflow installed: False" in result.stdout  # requirements.txt brings none.
  assert "tensorflow imported: False" in result.stdout
  assert files(prepared(tmp_path)) == reference


def test_kill_9_then_a_rerun_gives_the_bytes_of_an_uninterrupted_preparation(reference, tmp_path):
  kill_at = 3 * EXAMPLES_PER_SHARD + 5  # Inside the train split's fourth shard.
  result = run_python([CHECK, str(tmp_path), f"--kill_at={kill_at}"])
  assert result.returncode == -9, result.stderr
  assert not os.path.exists(prepared(tmp_path))  # Half-written: never where a reader looks.
  left = sorted(os.listdir(prepare.incomplete_dir(prepared(tmp_path))))
  assert [n for n in left if not n.endswith(".tmp" + n.rsplit(".tmp", 1)[-1])][:3] == [
    f"counting-train.array_record-0000{i}" for i in range(3)
  ]
  finished = {
    n: os.path.getmtime(os.path.join(prepare.incomplete_dir(prepared(tmp_path)), n)) for n in left[:3]
  }
  prepare_counting(str(tmp_path))
  assert files(prepared(tmp_path)) == reference
  for name, mtime in finished.items():  # Finished shards are kept, not written again.
    assert os.path.getmtime(os.path.join(prepared(tmp_path), name)) == mtime


def test_a_kill_between_a_splits_last_shard_and_its_record_is_resumed(reference, tmp_path):
  result = run_python([CHECK, str(tmp_path), f"--kill_at={SIZES['train']}"])  # The first validation item.
  assert result.returncode == -9, result.stderr
  directory = prepare.incomplete_dir(prepared(tmp_path))
  os.remove(os.path.join(directory, "train.lengths.json"))  # As if killed just before writing it.
  prepare_counting(str(tmp_path))
  assert files(prepared(tmp_path)) == reference


def test_a_full_disk_is_one_line_naming_the_shard_and_a_rerun_continues(reference, tmp_path):
  shard_bytes = len(reference["counting-train.array_record-00000"])
  result = run_python([CHECK, str(tmp_path), f"--file_size_limit={shard_bytes // 2}"])
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert (
    lines[-1].startswith("error: DataError: cannot write ")
    and "counting-train.array_record-00000" in lines[-1]
  )
  assert "File too large" in lines[-1] and "run again to continue" in lines[-1]
  assert not prepare.is_prepared(prepared(tmp_path))
  assert not [n for n in os.listdir(prepare.incomplete_dir(prepared(tmp_path))) if ".tmp" in n]
  prepare_counting(str(tmp_path))
  assert files(prepared(tmp_path)) == reference


def test_workers_write_the_same_bytes(reference, tmp_path):
  prepare_counting(str(tmp_path), workers=2)
  assert files(prepared(tmp_path)) == reference


def test_a_second_preparation_at_once_is_refused_and_hosts_of_one_job_wait(tmp_path):
  directory = prepared(tmp_path)
  refused = pytest.raises(DataError, match=rf"^{directory} is being prepared by process {os.getpid()} ")
  with prepare.exclusive(directory), refused:
    prepare_counting(str(tmp_path))
  assert not os.path.exists(directory)  # The refused one wrote nothing.

  released = []

  def hold():
    with prepare.exclusive(directory):
      time.sleep(0.5)
      released.append(time.monotonic())

  holder = threading.Thread(target=hold)
  holder.start()
  time.sleep(0.1)
  with prepare.exclusive(directory, wait=True):  # Blocks until the holder lets go.
    assert released and time.monotonic() >= released[0]
  holder.join()


def test_an_empty_split_is_an_error(tmp_path):
  class Empty(Counting):
    def split_plans(self, dl_manager):
      return {"train": prepare.SplitPlan([], make_example, num_examples=0)}

  with pytest.raises(DataError, match="split 'train' of empty has no examples"):
    Empty(data_dir=str(tmp_path)).download_and_prepare()
  assert not prepare.is_prepared(os.path.join(str(tmp_path), "empty", "1.0.0"))


def test_the_prepared_directory_reads_as_a_tfds_dataset(reference, tmp_path):
  prepare_counting(str(tmp_path))
  builder = tfds.builder_from_directory(prepared(tmp_path))
  assert builder.info.splits["train"].num_examples == SIZES["train"]
  assert builder.info.splits["train"].shard_lengths[-1] == SIZES["train"] % EXAMPLES_PER_SHARD


@pytest.mark.e2e  # A script in its own interpreter.
def test_a_script_without_a_main_guard_gets_one_error_not_endless_workers(tmp_path):
  script = tmp_path / "unguarded.py"  # Spawned workers import the script, which prepares again.
  script.write_text(
    f"from prepare_check import prepare_counting\nprepare_counting({str(tmp_path)!r}, workers=2)\n"
  )
  result = run_python(
    [str(script)], env={"PYTHONPATH": os.pathsep.join([REPO, os.path.dirname(CHECK)])}, timeout=120
  )
  assert result.returncode != 0
  assert "DataError: a preparation worker process died" in result.stderr
  assert 'under `if __name__ == "__main__":`' in result.stderr
  assert not prepare.is_prepared(prepared(tmp_path))
