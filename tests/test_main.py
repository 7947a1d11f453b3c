"""The command line: a tiny end-to-end run (a fresh interpreter), and one clear error line for bad input."""

import json
import os

import pytest

from conftest import main_in_process, run_python


def run_main(tmp_path, data_dir, *flags):
  common = ["-m", "mmlearn.main", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
  return run_python([*common, f"--config.dataset.data_dir={data_dir}", *flags])


def test_main_trains_with_the_overrides_and_prints_the_metrics_it_wrote(capsys, data_dir, tmp_path):
  argv = ["--config=configs/tiny.py", f"--workdir={tmp_path}", f"--config.dataset.data_dir={data_dir}"]
  status, stderr, stdout = main_in_process(
    [*argv, "--config.optimizer.learning_rate=0.05"], capsys, stdout=True
  )
  assert status == 0, stderr[-3000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["optimizer"]["learning_rate"] == 0.05
  last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  summary = (
    f"test accuracy {100 * last['test/accuracy']:.2f}% (validation {100 * last['validation/accuracy']:.2f}%)"
  )
  assert stdout.strip() == f"{summary} at step 6"  # The headline is the evaluation it wrote.
  assert os.path.isdir(tmp_path / "checkpoints" / "6")


@pytest.mark.e2e
def test_main_runs_in_a_fresh_interpreter(data_dir, tmp_path):
  result = run_main(tmp_path, data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("at step 6")
  # Progress lines with the rate, the ETA and the input pipeline's share; no library INFO lines.
  assert "examples/s" in result.stderr and "ETA" in result.stderr
  assert "of the time in the input pipeline" in result.stderr and "/orbax/" not in result.stderr


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.optimizer.learnig_rate=0.1", "did you mean 'optimizer.learning_rate'?"),
    ("--config.batch_size=many", "batch_size"),
    ("--config.classification.fusion=nope", "unknown fusion 'nope'"),
    ("--config.mvae.beta=2", "section 'mvae' belongs to task 'mvae', and config.task is 'classification'"),
    ("--config.evals.x.type=nope", "evaluators are added in a config file"),
    ("--config.dataset.options.tokenizer=subword", "config.dataset.options has no key 'tokenizer'"),
  ],
)
def test_bad_input_gives_one_error_line_and_nonzero_exit(capsys, data_dir, tmp_path, flag, message):
  argv = ["--config=configs/tiny.py", f"--workdir={tmp_path}", f"--config.dataset.data_dir={data_dir}", flag]
  status, stderr = main_in_process(argv, capsys)
  assert status != 0
  error_lines = [line for line in stderr.splitlines() if message in line]
  assert error_lines, stderr[-3000:]
  assert "Traceback" not in stderr and not os.path.exists(tmp_path / "config.json")
