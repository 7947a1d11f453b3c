"""scripts/results.py: a 2-seed table end to end, and resuming reads finished runs instead of retraining."""

import csv
import json
import os
import re

import pytest

from conftest import run_python

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.


def test_results_table_over_seeds(data_dir, tmp_path):
  args = [
    "scripts/results.py",
    f"--workdir={tmp_path}",
    "--configs=configs/tiny.py",
    "--seeds=2",
    "--override=num_train_steps=2",
    "--override=optimizer.learning_rate=0.05",
  ]
  result = run_python(args, env={"MMLEARN_DATA_DIR": data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))  # noqa: SIM115
  assert len(rows) == 1 and rows[0]["seeds"] == "2"
  runs = [json.loads((tmp_path / "tiny" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
  selected_by = [run["validation/accuracy"] for run in runs]  # The default --metric.
  assert float(rows[0]["mean"]) == sum(selected_by) / 2
  assert float(rows[0]["test_mean"]) == sum(run["test/accuracy"] for run in runs) / 2
  assert int(rows[0]["parameters"]) == runs[0]["model/num_parameters"] > 0
  assert (
    json.loads((tmp_path / "tiny" / "seed0" / "config.json").read_text())["optimizer"]["learning_rate"]
    == 0.05
  )
  assert (tmp_path / "results.png").stat().st_size > 0
  table = (tmp_path / "results.md").read_text()
  assert "| `configs/tiny.py` (selected) |" in table and table.startswith("Selected on validation/accuracy")

  # A second invocation reads the finished runs back: nothing is retrained, so no new metrics lines.
  before = (tmp_path / "tiny" / "seed0" / "metrics.jsonl").read_text()
  assert run_python(args, env={"MMLEARN_DATA_DIR": data_dir}).returncode == 0
  assert (tmp_path / "tiny" / "seed0" / "metrics.jsonl").read_text() == before
  assert os.path.exists(tmp_path / "results.md")


def test_a_diverged_seed_is_recorded_and_counted_not_averaged(data_dir, tmp_path):
  args = [
    "scripts/results.py",
    f"--workdir={tmp_path}",
    "--configs=configs/tiny.py",
    "--seeds=1",
    "--override=num_train_steps=4",
    "--override=optimizer.learning_rate=1e30",  # The loss goes non-finite within a few steps.
  ]
  result = run_python(args, env={"MMLEARN_DATA_DIR": data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  recorded = json.loads((tmp_path / "tiny" / "seed0" / "result.json").read_text())
  assert re.search(r"non-finite (loss|grad_norm|param_norm)", recorded["diverged"]), recorded
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))  # noqa: SIM115
  assert rows[0]["seeds"] == "0" and rows[0]["diverged"] == "1"
  table = (tmp_path / "results.md").read_text()
  assert "| every seed diverged | - | 0 (1 diverged) | - | - |" in table and "nan" not in table
