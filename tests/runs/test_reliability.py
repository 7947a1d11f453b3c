"""Reliability: bad input is one line, a workdir cannot be corrupted, damaged checkpoints are caught.

Errors raised by `train_and_evaluate` are checked in-process as the line `main` prints for them
(`printed`); what only the command line does (flag parsing, config files, the exit status) runs `main`
in-process too (`main_in_process`). A fresh `python -m mmlearn.main` runs where another process must
hold the workdir's lock or log to its own stderr, and for the kill -9 runs.
"""

import json
import os
import re
import shutil
import signal
import struct

import jax
import numpy as np
import pytest

from conftest import main_in_process, run_python
from mmlearn import errors, tasks
from mmlearn.errors import CheckpointError, DivergedError, WorkdirError
from mmlearn.runs import checkpoint, workdir
from mmlearn.train import loop
from mmlearn.train.state import initial_state
from mmlearn.train.step import GUARDED_METRICS, check_finite


def cli(*argv: str) -> tuple[int, str]:
  """(exit status, stderr) of `python -m mmlearn.main ARGV`, in a fresh interpreter."""
  result = run_python(["-m", "mmlearn.main", *argv])
  return result.returncode, result.stderr


def printed(error: BaseException) -> str:
  """The line `main` prints for a bad-input error (after checking that it is one)."""
  assert isinstance(error, errors.USER_ERRORS), repr(error)
  return f"error: {type(error).__name__}: {errors.one_line(error)}"


def read(path: str, mode: str = "r"):
  with open(path, mode) as f:
    return f.read()


def write(path: str, data) -> None:
  with open(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def params_at(directory: str, step: int | None = None):
  """The parameters saved in a workdir's checkpoint (the latest by default), as a host pytree."""
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(os.path.join(directory, "checkpoints"), item_names=checkpoint.ITEMS)
  step = manager.latest_step() if step is None else step
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  manager.close()
  return step, state["params"]


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished_once(data_dir, tmp_path_factory):
  from configs import tiny

  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  directory = str(tmp_path_factory.mktemp("finished") / "run")
  loop.train_and_evaluate(config, directory)
  return directory


@pytest.fixture
def finished(finished_once, tmp_path):
  """A finished 6-step tiny run with checkpoints at steps 4 and 6: each test's own copy of one run, as the
  tests damage, extend or lock it."""
  directory = str(tmp_path / "run")
  shutil.copytree(finished_once, directory)
  return directory


# ---- Bad input: one line each, exit status 1, nothing overwritten ----

BAD_CONFIG_FILES = {
  "syntax.py": ("def get_config(:\n", "syntax.py:1: SyntaxError: invalid syntax"),
  "raises.py": (
    "def get_config():\n  return 1 / 0\n",
    "raises.py:2: ZeroDivisionError in get_config: division by zero",
  ),
}


@pytest.mark.parametrize(
  "key, value, line",
  [
    ("classification.fusion", "nope", "error: ConfigError: unknown fusion 'nope'"),
    ("dataset.name", "imagenet42", "error: ConfigError: unknown dataset 'imagenet42'"),
    (
      "optimizer.learning_rate",
      -1.0,
      "error: ConfigError: optimizer.learning_rate must be finite and positive, got -1.0",
    ),
    (
      "optimizer.learning_rate",
      float("inf"),
      "error: ConfigError: optimizer.learning_rate must be finite and positive, got inf",
    ),
    (
      "batch_size",
      1024,
      "error: ConfigError: batch_size 1024 is larger than the training split (512 examples): "
      "every batch would repeat examples",
    ),
  ],
)
def test_bad_config_is_one_line_and_writes_nothing(tiny_config, tmp_path, key, value, line):
  *parents, leaf = key.split(".")
  node = tiny_config
  for name in parents:
    node = node[name]
  node[leaf] = value
  with pytest.raises(errors.Error) as failure:
    loop.train_and_evaluate(tiny_config, str(tmp_path / "w"))
  assert printed(failure.value).startswith(line)
  assert not os.path.exists(tmp_path / "w" / "config.json")  # Nothing written for a config that cannot run.


@pytest.mark.parametrize("name", sorted(BAD_CONFIG_FILES))
def test_broken_config_file_is_one_line_naming_file_and_line(capsys, tmp_path, name):
  text, line = BAD_CONFIG_FILES[name]
  (tmp_path / name).write_text(text)
  status, stderr = main_in_process([f"--config={tmp_path / name}", f"--workdir={tmp_path}/w"], capsys)
  assert status == 1 and "Traceback" not in stderr
  assert error_lines(stderr) == [f"error: ConfigError: {tmp_path}/{line}"]


def test_missing_config_file_and_unusable_workdirs_are_one_line(capsys, tmp_path):
  status, stderr = main_in_process([f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}/w"], capsys)
  assert (status, error_lines(stderr)) == (1, [f"error: ConfigError: no config file '{tmp_path}/nope.py'"])
  (tmp_path / "file").write_text("")
  cases = {
    "--workdir=": "error: WorkdirError: --workdir is empty: name a directory for the run",
    f"--workdir={tmp_path}/file": f"error: WorkdirError: workdir '{tmp_path}/file' is a file, not a "
    "directory",
    "--workdir=/dev/null/run": "error: NotADirectoryError: '/dev/null/run': Not a directory",
  }
  for flag, line in cases.items():
    status, stderr = main_in_process(["--config=configs/tiny.py", flag], capsys)
    assert (status, error_lines(stderr)) == (1, [line]) and "Traceback" not in stderr


def test_a_bug_keeps_its_traceback(capsys, tiny_config, tmp_path, monkeypatch):
  """A TypeError from the code (not the config) is not disguised as a one-line input error."""

  def broken(*args, **kwargs):
    raise TypeError("a bug in a new task")

  monkeypatch.setattr(tasks, "build", broken)
  with pytest.raises(TypeError, match="a bug in a new task"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))
  assert not isinstance(TypeError("x"), errors.USER_ERRORS)


# ---- The workdir: config changes, the lock ----


def test_resume_with_another_config_is_refused_and_loses_nothing(finished, tiny_config):
  before = {name: read(os.path.join(finished, name)) for name in ("config.json", "metrics.jsonl")}
  for key, value, shown in [
    ("head_hidden", (32,), "classification.head_hidden ([16] -> [32])"),
    ("learning_rate", 0.5, "optimizer.learning_rate (0.1 -> 0.5)"),
    ("seed", 3, "seed (0 -> 3)"),
  ]:
    config = tiny_config.copy_and_resolve_references()
    node = (
      config.classification
      if key == "head_hidden"
      else config.optimizer
      if key == "learning_rate"
      else config
    )
    node[key] = value
    with pytest.raises(WorkdirError, match="holds a run with another config: " + re.escape(shown)):
      loop.train_and_evaluate(config, finished)
    with pytest.raises(WorkdirError, match="would change what the saved parameters were trained with"):
      loop.train_and_evaluate(config, finished, allow_config_changes=True)
  after = {name: read(os.path.join(finished, name)) for name in before}
  assert after == before


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_harmless_changes_and_a_longer_run_need_the_flag(finished, tiny_config):
  tiny_config.log_every_steps = 1
  tiny_config.num_train_steps = 8
  with pytest.raises(WorkdirError, match=r"log_every_steps \(2 -> 1\), num_train_steps \(6 -> 8\)"):
    loop.train_and_evaluate(tiny_config, finished)
  loop.train_and_evaluate(tiny_config, finished, allow_config_changes=True)
  saved = json.loads(read(os.path.join(finished, "config.json")))
  assert (saved["num_train_steps"], saved["log_every_steps"]) == (8, 1)
  assert params_at(finished)[0] == 8
  tiny_config.num_train_steps = 7  # Shorter than the saved run: refused even with the flag.
  with pytest.raises(WorkdirError, match=r"num_train_steps \(8 -> 7\) would change"):
    loop.train_and_evaluate(tiny_config, finished, allow_config_changes=True)


@pytest.mark.e2e  # Resumes a whole run.
def test_a_run_saved_before_a_key_existed_resumes_while_that_key_is_at_its_default(finished, tiny_config):
  path = os.path.join(finished, "config.json")
  saved = json.loads(read(path))
  del saved["optimizer"]["frozen"], saved["init_from"]  # As a run saved before these keys were added.
  with open(path, "w") as f:
    json.dump(saved, f)
  tiny_config.optimizer.frozen = "text_encoder/"  # Not the default: the saved run did not train this way.
  with pytest.raises(WorkdirError, match=r"optimizer.frozen \('' -> 'text_encoder/'\)"):
    loop.train_and_evaluate(tiny_config, finished)
  tiny_config.optimizer.frozen = ""
  tiny_config.num_train_steps = 8
  loop.train_and_evaluate(tiny_config, finished, allow_config_changes=True)
  assert params_at(finished)[0] == 8


def test_a_checkpoint_of_another_model_is_one_line(finished, tiny_config):
  os.remove(os.path.join(finished, "config.json"))  # A run saved before config.json existed, say.
  tiny_config.classification.head_hidden = (32,)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"checkpoints/6 holds another model"):
    loop.train_and_evaluate(tiny_config, finished, fallback=True)
  assert sorted(os.listdir(os.path.join(finished, "checkpoints"))) == ["4", "6"]  # Not set aside.


def test_a_second_trainer_on_a_busy_workdir_exits_naming_the_holder(finished, data_dir):
  with workdir.exclusive(finished):  # This process holds the lock, as a running trainer would.
    status, stderr = cli(
      "--config=configs/tiny.py", f"--workdir={finished}", f"--config.dataset.data_dir={data_dir}"
    )
  assert status == 1
  assert error_lines(stderr) == [
    f"error: WorkdirError: workdir '{finished}' is in use by process {os.getpid()} ({finished}/.lock); "
    "wait for it or use another --workdir"
  ]
  with workdir.exclusive(finished):  # Released when the holder ends: the lock can be taken again.
    pass


# ---- The NaN guard ----


def test_guard_checks_loss_gradient_and_parameter_norms():
  history = [(7, {"loss": 1.0, "grad_norm": 1.0, "param_norm": 1.0})]
  check_finite(history, 6)
  for name in GUARDED_METRICS:
    bad = [(8, {**history[0][1], name: float("inf")})]
    with pytest.raises(DivergedError, match=rf"non-finite {name} \(inf\) at step 8; .*checkpoint: step 6"):
      check_finite(bad, 6)
  with pytest.raises(DivergedError, match="last good checkpoint: none saved"):
    check_finite([(1, {**history[0][1], "loss": float("nan")})], None)


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_diverged_state_is_never_saved_so_the_last_good_checkpoint_survives_rotation(tiny_config, tmp_path):
  tiny_config.num_train_steps = 30
  tiny_config.checkpoint_every_steps = 1
  tiny_config.log_every_steps = 1
  tiny_config.keep_checkpoints = 2
  tiny_config.optimizer.update(name="sgd", learning_rate=1e6, warmup_steps=0, momentum=0.9)
  with pytest.raises(DivergedError) as failure:
    loop.train_and_evaluate(tiny_config, str(tmp_path))
  named = int(str(failure.value).rsplit("step ", 1)[1])
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert named == steps[-1] and len(steps) <= 2
  for step in steps:  # Every checkpoint on disk restores and is finite.
    _, params = params_at(str(tmp_path), step)
    assert checkpoint.state_checks(params)[1] is None


# ---- Damaged checkpoints ----


def flip_bytes(directory: str, rng: np.random.Generator, count: int = 16) -> None:
  """Overwrites `count` random bytes of one random file of a checkpoint's state (orbax names its data
  files by random hashes, so which file a trial hits differs from run to run)."""
  files = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(directory, "state"))
    for name in names
    if name != "commit_success.txt"
  )
  path = files[rng.integers(len(files))]
  data = bytearray(read(path, "rb"))
  for position in rng.choice(len(data), size=min(count, len(data)), replace=False):
    data[position] = (data[position] + 1 + rng.integers(255)) % 256
  write(path, bytes(data))


# A read that fails part-way ends orbax's event loop while TensorStore's other reads are still in flight;
# their completions then find the loop closed ("Event loop is closed", raised in TensorStore's threads and
# ignored). Only in-process: the command line exits on the one-line error first (checked by hand).
@pytest.mark.filterwarnings("ignore:Exception ignored in. None:pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_never_restores_wrong_values(finished, tiny_config, tmp_path):
  """16 bytes overwritten in a state file: restore raises naming the step, or (bytes orbax does not read)
  returns exactly the saved state; never silently wrong values."""
  from mmlearn import data, optim

  sources, info = data.load_sources("mmshapes", config="tiny", data_dir=tiny_config.dataset.data_dir)
  task = tasks.build(tiny_config, info=info, train_source=sources["train"])
  tx = optim.make_optimizer(tiny_config.optimizer, 6)
  template = initial_state(tiny_config, task, tx, sources["train"], 1)
  checkpointer = checkpoint.Checkpointer(finished, keep=2)
  intact = checkpoint.state_digest(checkpointer.restore(6, template))
  checkpointer.close()
  rng = np.random.default_rng(0)
  outcomes = []
  for trial in range(10):
    copy = str(tmp_path / f"trial{trial}")
    shutil.copytree(finished, copy)
    flip_bytes(os.path.join(copy, "checkpoints", "6"), rng)
    checkpointer = checkpoint.Checkpointer(copy, keep=2)
    try:
      outcomes.append(checkpoint.state_digest(checkpointer.restore(6, template)) == intact)
    except CheckpointError as e:
      assert re.match(rf"checkpoint {re.escape(copy)}/checkpoints/6 (is corrupt|cannot be re)", str(e)), e
      outcomes.append(str(e))
    finally:
      checkpointer.close()
  assert False not in outcomes, outcomes  # No restore returned values other than the saved ones.
  assert any(isinstance(o, str) for o in outcomes), outcomes  # Some damage was caught.

  # Damage that decodes cleanly: step 4's state files under step 6's name (a mixed-up copy). Only the
  # checksum can tell; orbax restores step 4's values without complaint.
  copy = str(tmp_path / "swapped")
  shutil.copytree(finished, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "6", "state"))
  shutil.copytree(
    os.path.join(copy, "checkpoints", "4", "state"), os.path.join(copy, "checkpoints", "6", "state")
  )
  checkpointer = checkpoint.Checkpointer(copy, keep=2)
  with pytest.raises(
    CheckpointError, match=r"checkpoints/6 is corrupt: its state does not match its checksum"
  ):
    checkpointer.restore(6, template)
  checkpointer.close()


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_damaged_latest_checkpoint_is_named_and_fallback_resumes_from_an_intact_one(
  capsys, finished, data_dir
):
  _, original = params_at(finished, 6)
  integrity = os.path.join(finished, "checkpoints", "6", "integrity", "metadata")
  record = json.loads(read(integrity))
  record["state_sha256"] = "0" * 64  # The state no longer matches its checksum.
  write(integrity, json.dumps(record))
  args = ["--config=configs/tiny.py", f"--workdir={finished}", f"--config.dataset.data_dir={data_dir}"]
  status, stderr = cli(*args)
  assert status == 1
  assert error_lines(stderr) == [
    f"error: CheckpointError: checkpoint {finished}/checkpoints/6 is corrupt: its state does not match its "
    "checksum; --fallback resumes from the newest intact one (older: [4])"
  ]
  status, stderr = cli(*args, "--fallback")
  assert status == 0, stderr[-2000:]
  assert "resuming from the checkpoint at step 4" in stderr
  assert os.path.isdir(os.path.join(finished, "corrupt_checkpoints", "6"))  # Set aside, not deleted.
  step, params = params_at(finished)
  assert step == 6
  assert_trees_equal(params, original)  # Steps 5-6 replayed from step 4: the same parameters.


# ---- kill -9, then resume: bitwise the uninterrupted run ----

KILLER = """
import os, signal, sys
from orbax.checkpoint._src.path import async_path
from configs import tiny
from mmlearn.train import loop

kill_step, in_write = int(sys.argv[1]), sys.argv[2] == "write"
rename = async_path.rename

async def killing_rename(src, dst):
  if in_write and os.path.basename(str(dst)) == str(kill_step):
    os.kill(os.getpid(), signal.SIGKILL)  # The step's files are written, the commit rename is not.
  return await rename(src, dst)

async_path.rename = killing_rename

def kill(step, metrics):
  if not in_write and step == kill_step:
    os.kill(os.getpid(), signal.SIGKILL)

config = tiny.get_config()
config.dataset.data_dir = sys.argv[3]
config.update(num_train_steps=12, checkpoint_every_steps=3, log_every_steps=1)
loop.train_and_evaluate(config, sys.argv[4], hooks=[kill])
"""


def read_events(directory: str) -> list[tuple[int, str, float | None]]:
  """(step, tag, value) of each event in a TensorBoard directory, in file order; tag "purge": a restart."""
  from tensorboardX.proto.event_pb2 import Event

  events = []
  for name in sorted(os.listdir(directory)):
    data = read(os.path.join(directory, name), "rb")
    position = 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position : position + 8])
      event = Event.FromString(data[position + 12 : position + 12 + length])
      position += 12 + length + 4
      if event.HasField("session_log"):
        events.append((event.step, "purge", None))
      events.extend(
        (event.step, v.tag, v.simple_value) for v in event.summary.value if v.HasField("simple_value")
      )
  return events


def visible_scalars(events, tag: str) -> dict[int, float]:
  """What TensorBoard shows: a restart marker at step s hides earlier events at steps >= s."""
  shown: list[tuple[int, float]] = []
  for step, name, value in events:
    if name == "purge":
      shown = [(s, v) for s, v in shown if s < step]
    elif name == tag:
      shown.append((step, value))
  steps = [s for s, _ in shown]
  assert len(steps) == len(set(steps)), steps  # No step shown twice.
  return dict(shown)


@pytest.mark.e2e
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_parameters(
  data_dir, tiny_config, tmp_path
):
  tiny_config.update(num_train_steps=12, checkpoint_every_steps=3, log_every_steps=1)
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(tiny_config, straight)
  run = str(tmp_path / "killed")
  rng = np.random.default_rng(14)
  kills = [(int(s), "log") for s in rng.choice([2, 4, 5, 7, 8, 10, 11], size=3, replace=False)]
  kills = sorted([*kills, (9, "write")])  # One kill inside the step-9 checkpoint write.
  for step, where in kills:
    result = run_python(["-c", KILLER, str(step), where, data_dir, run])
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not os.path.exists(os.path.join(run, "checkpoints", str(step)))  # Killed before it committed.
  result = run_python(["-c", KILLER, "0", "log", data_dir, run])  # The last attempt runs to the end.
  assert result.returncode == 0, result.stderr[-3000:]

  step_a, params_a = params_at(straight)
  step_b, params_b = params_at(run)
  assert step_a == step_b == 12
  assert_trees_equal(params_a, params_b)

  records = [json.loads(line) for line in read(os.path.join(run, "metrics.jsonl")).splitlines()]
  train_steps = [r["step"] for r in records if "train/loss" in r]
  assert train_steps == list(range(1, 13))  # Replayed steps replace the lost ones, none twice.
  # Each restart resumes from the last checkpoint (every 3 steps) committed before its kill.
  expected_resumes = [3 * ((step - 1) // 3) for step, _ in kills if step > 3]
  assert [r["resumed_from"] for r in records if "resumed_from" in r] == expected_resumes
  straight_records = map(json.loads, read(os.path.join(straight, "metrics.jsonl")).splitlines())
  expected = {r["step"]: r["train/loss"] for r in straight_records if "train/loss" in r}
  shown = visible_scalars(read_events(os.path.join(run, "tensorboard")), "train/loss")
  assert sorted(shown) == list(range(1, 13))
  for step, value in shown.items():
    assert value == pytest.approx(expected[step], rel=1e-6)
