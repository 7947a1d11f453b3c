"""The robustness suite: curve areas, seeded noise, the curves measured, and the script end to end."""

import csv
import json

import numpy as np
import pytest

from conftest import main_in_process, run_python
from mmlearn.data import missing
from mmlearn.errors import ConfigError
from mmlearn.evaluators import robustness
from mmlearn.train import loop


def test_area_is_the_mean_of_the_curve():
  assert robustness.area([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1.0)
  assert robustness.area(robustness.LEVELS, [1 - x for x in robustness.LEVELS]) == pytest.approx(0.55)
  assert robustness.area([0, 1, 3], [0, 1, 1]) == pytest.approx((0.5 + 2) / 3)


def test_noise_is_seeded_per_example_and_clipped():
  batch = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": np.arange(4)}
  noisy = robustness.noise_transform("image", 0.5, seed=1)
  a = noisy(batch, np.array([0, 1, 2, 3]))["image"]
  b = noisy(batch, np.array([2, 3, 4, 5]))["image"]
  np.testing.assert_array_equal(a[2:], b[:2])  # Example 2's noise does not depend on its batch.
  assert a.std() == pytest.approx(0.5, rel=0.15)
  assert (batch["image"] == 0).all()  # The input batch is left alone.
  loud = robustness.noise_transform("image", 5.0, seed=1)(batch, np.arange(4))["image"]
  assert loud.min() == -1.0 and loud.max() == 1.0


def test_subsample_is_seeded_sorted_and_the_whole_split_for_0():
  source = list(range(100))
  subset = robustness.subsample(source, 10, seed=3)
  picked = [subset[i] for i in range(len(subset))]
  assert len(picked) == 10 and picked == sorted(picked) and len(set(picked)) == 10
  again = robustness.subsample(source, 10, seed=3)
  assert [again[i] for i in range(10)] == picked
  other = robustness.subsample(source, 10, seed=4)
  assert [other[i] for i in range(10)] != picked
  assert robustness.subsample(source, 0, seed=3) is source
  assert robustness.subsample(source, 1000, seed=3) is source
  with pytest.raises(ConfigError, match="num_examples must be >= 0"):
    robustness.subsample(source, -1, seed=3)


def test_curves_measure_each_modality_all_together_and_noise():
  absent = missing.MissingModalities(("audio", "image"), {}, {}, imputation="zero")
  batch = {"audio": np.full((2000, 2, 2, 1), 0.5, np.float32), "image": np.ones((2000, 3, 3, 1), np.float32)}
  batch["label"] = np.zeros(2000, np.int32)
  calls = []

  def accuracy(transform, point):  # A stand-in model: the fraction of audio inputs still intact.
    calls.append(point)
    out = batch if transform is None else transform(batch, np.arange(2000))
    return float((out["audio"] == 0.5).all(axis=(1, 2, 3)).mean())

  curves = {c.name: c for c in robustness.curves(accuracy, absent)}
  assert sorted(curves) == ["missing/all", "missing/audio", "missing/image", "noise/audio", "noise/image"]
  assert len(calls) == 1 + 5 * 9  # The clean point is shared.
  assert calls[:2] == ["clean", "missing/audio rate 0.1"] and calls[-1] == "noise/image std 0.9"
  np.testing.assert_allclose(curves["missing/audio"].values, [1 - r for r in robustness.LEVELS], atol=0.03)
  assert curves["missing/image"].values == (1.0,) * 10
  # Both at rate r: audio goes unless it is the one kept (the keep-one rule), so more survives than 1 - r.
  assert all(v >= 1 - r - 0.03 for v, r in zip(curves["missing/all"].values, robustness.LEVELS, strict=True))
  assert curves["noise/audio"].values[0] == 1.0 and curves["noise/audio"].values[1] < 0.01


@pytest.mark.e2e
def test_script_writes_the_curves_of_a_run_with_missing_modalities(tiny_config, tmp_path):
  tiny_config.missing.train_rates.image = 0.3
  tiny_config.missing.modality_dropout = 0.2
  tiny_config.missing.test_rates.text = 0.5
  tiny_config.missing.imputation = "learned"
  results = loop.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert 0 <= results["test/accuracy"] <= 1
  result = run_python(
    ["scripts/robustness.py", f"--workdir={tmp_path / 'run'}", "--split=validation", "--num_examples=40"]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # Progress and results on stdout, each point named; no library log lines (orbax restores, TFDS).
  assert "validation missing/text rate 0.5: accuracy" in result.stdout
  assert "/orbax/" not in result.stderr and "checkpoint" not in result.stderr.lower(), result.stderr[-3000:]
  with open(tmp_path / "run" / "robustness" / "robustness.csv") as f:
    rows = {row["curve"]: row for row in csv.DictReader(f)}
  assert sorted(rows) == ["missing/all", "missing/image", "missing/text", "noise/image"]
  for row in rows.values():
    assert 0 <= float(row["area"]) <= 1 and len(row) == 2 + 10
  assert (tmp_path / "run" / "robustness" / "robustness.png").stat().st_size > 0
  table = (tmp_path / "run" / "robustness" / "robustness.md").read_text()
  assert "| missing/text |" in table and "validation, 40 examples" in table


def test_script_without_a_run_is_one_error_line(capsys, tmp_path):
  status, stderr = main_in_process([f"--workdir={tmp_path}"], capsys, script="scripts/robustness.py")
  assert status == 1 and "error: WorkdirError" in stderr
  assert "Traceback" not in stderr


def _variant(root, name, validation_areas, test_areas):
  """A sweep variant's done.json and its curves on both splits, as `scripts/robustness.py` writes them."""
  (root / name).mkdir()
  (root / name / "done.json").write_text('{"status": "done"}')
  lines = [
    {"step": 5, "validation/accuracy": 0.5},
    {"step": 10, "validation/accuracy": 0.4, "test/accuracy": 0.3},
  ]
  lines.append({"step": 10, "best/validation/accuracy": 0.9, "best/test/accuracy": 0.8})  # Selected step 5.
  (root / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  for split, areas in (("validation", validation_areas), ("test", test_areas)):
    (root / name / f"robustness_{split}").mkdir()
    rows = [{"curve": f"missing/{m}", "area": a} for m, a in zip(("audio", "image"), areas, strict=True)]
    rows.append({"curve": "noise/image", "area": 0.99})  # Not a missing curve: never compared.
    with open(root / name / f"robustness_{split}" / "robustness.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, ["curve", "area"])
      writer.writeheader()
      writer.writerows(rows)


def test_table_selects_on_validation_and_reports_test(capsys, tmp_path):
  _variant(tmp_path, "zero", (0.70, 0.80), (0.90, 0.90))  # Best on test, second on validation.
  _variant(tmp_path, "learned", (0.76, 0.80), (0.60, 0.62))
  (tmp_path / "untested").mkdir()  # No curves yet: listed, never selected.
  status, stderr = main_in_process([f"--workdir={tmp_path}"], capsys, script="scripts/robustness_table.py")
  assert status == 0, stderr
  table = (tmp_path / "robustness.md").read_text()
  assert "| `learned` (selected) | 90.00% | 78.00% | 80.00% | 60.00% | 62.00% | 61.00% |" in table
  assert "| `untested` | - | - | - | - | - | - |" in table and "noise" not in table
  assert table.startswith("Selected on validation mean area of the missing/ curves; test reported once")


def test_table_without_validation_curves_is_one_error_line(capsys, tmp_path):
  (tmp_path / "zero").mkdir()
  status, stderr = main_in_process([f"--workdir={tmp_path}"], capsys, script="scripts/robustness_table.py")
  assert status == 1 and "error: DataError" in stderr and "robustness_{split}" in stderr
