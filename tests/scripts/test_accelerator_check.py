"""scripts/accelerator_check.py: its `--smoke` dry run end to end on the CPU, and the pieces it is made of."""

import json
import os
import sys

import pytest

from conftest import REPO, own_flags, run_python


@pytest.fixture(scope="module")
def check_module():
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  try:
    import accelerator_check  # pyright: ignore[reportMissingImports]
  finally:
    sys.path.remove(os.path.join(REPO, "scripts"))
  return accelerator_check


@pytest.fixture(scope="module")
def benchmark_module():
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  try:
    with own_flags():
      import benchmark  # pyright: ignore[reportMissingImports]
  finally:
    sys.path.remove(os.path.join(REPO, "scripts"))
  return benchmark


def avmnist_raw_dir() -> str | None:
  beside = os.path.join(os.path.dirname(REPO), "shared", "data", "avmnist")
  for directory in (os.environ.get("MMLEARN_AVMNIST_DIR"), beside):
    if directory and os.path.isdir(directory):
      return directory
  return None


@pytest.mark.e2e
def test_smoke_run_writes_every_steps_output(tmp_path):
  out = tmp_path / "accel"
  args = ["scripts/accelerator_check.py", f"--out={out}", "--smoke", f"--site={tmp_path / 'site'}"]
  raw = avmnist_raw_dir()
  args += [f"--avmnist_dir={raw}"] if raw else ["--avmnist_dir="]
  result = run_python(args, timeout=600)
  steps = json.loads((out / "steps.json").read_text())
  assert result.returncode == 0, (steps, result.stdout[-3000:], result.stderr[-3000:])
  names = ["deps", "facts", "bench_vit_bf16", "prepare_avmnist", "bench_avmnist", "torch_avmnist", "pytest"]
  names += ["bench_default", "default_run", "bench_vit_fp32", "bench_clip"]
  assert list(steps) == names
  for name, record in steps.items():
    assert record["status"] in ("ok", "skipped"), (name, record)
    assert record["seconds"] >= 0 and record["note"], (name, record)
    assert (out / "logs" / f"{name}.log").exists() or record["status"] == "skipped" or name == "deps", name
    if record["status"] == "ok":
      for path in record["outputs"]:
        assert (out / path).stat().st_size > 0, (name, path)

  facts = json.loads((out / "facts.json").read_text())
  assert facts["backend"] == "cpu" and facts["devices"][0]["kind"] == "cpu" and facts["jax"]
  assert "jax" in (out / "facts.txt").read_text()

  rows = [json.loads(line) for line in (out / "benchmark.jsonl").read_text().splitlines()]
  labels = {r["config"] for r in rows}
  assert {"default", "vit_b16_bfloat16", "vit_b16_float32"} <= labels
  assert ("avmnist_concat" in labels) == (raw is not None) == (steps["bench_avmnist"]["status"] == "ok")
  if raw:
    prepared = json.loads((out / "prepare_avmnist.json").read_text())
    assert prepared["config"] == "tiny" and prepared["examples"]["train"] > 0
  for r in rows:
    assert r["step_examples_per_s"] > 0 and r["step_ms"] > 0 and r["gflop_per_step"] > 0, r
    assert r["device_kind"] == "cpu" and r["mfu"] is None and "cpu" in r["peak"], r
  assert {r["precision"] for r in rows if r["config"].startswith("vit")} == {"bfloat16", "float32"}
  vit = [r for r in rows if r["config"].startswith("vit")]
  assert all(r["loop_examples_per_s"] is None for r in vit)  # The ViT's step alone.
  if raw:
    assert all("epoch_examples_per_s" in r for r in rows if r["config"] == "avmnist_concat")

  default = json.loads((out / "default_run.json").read_text())
  assert default["exit"] == 0 and default["wall_s"] > 0 and 0 <= default["test_accuracy"] <= 1
  assert (out / "pytest.xml").read_text().count("<testcase") >= 1

  summary = (out / "summary.md").read_text()
  for name in names:
    assert f"| {name} |" in summary
  assert "## Throughput and MFU" in summary and "`vit_b16_bfloat16`" in summary
  assert "end to end" in summary and "Tests on the device" in summary
  assert (out / "benchmark.md").read_text().count("\n") >= 2 + len(rows)


def test_the_peak_comes_from_the_device_kind_and_precision(benchmark_module):
  peak = benchmark_module.device_peak
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == (989.0, "NVIDIA H100 SXM bf16 dense 989 TFLOP/s")
  assert peak("NVIDIA H100 80GB HBM3", "float32")[0] == 494.5
  assert "TF32" in peak("NVIDIA H100 80GB HBM3", "float32")[1]
  assert peak("NVIDIA H200", "bfloat16")[0] == 989.0
  assert peak("NVIDIA A100-SXM4-80GB", "float32")[0] == 156.0
  assert peak("TPU v4", "bfloat16")[0] == 275.0
  assert peak("TPU v5 lite", "bfloat16")[0] == 197.0
  assert peak("TPU v5p", "float32")[0] == 459.0
  assert peak("TPU v6 lite", "bfloat16")[0] == 918.0
  for unknown in ("cpu", "NVIDIA H100 PCIe", "NVIDIA GeForce RTX 4090"):
    value, why = peak(unknown, "bfloat16")
    assert value is None and repr(unknown) in why


def test_a_failing_or_hanging_step_is_recorded_and_the_others_still_run(check_module, tmp_path, monkeypatch):
  def hangs(check, step):
    code, output, _ = check.call(step, [sys.executable, "-c", "import time; time.sleep(60)"])
    return check_module.failed(code, output)

  steps = [
    check_module.Step("hangs", 2, hangs),
    check_module.Step("raises", 5, lambda c, s: 1 / 0),
    check_module.Step("fine", 5, lambda c, s: ("ok", "done")),
  ]
  monkeypatch.setattr(check_module, "STEPS", steps)
  code = check_module.main([f"--out={tmp_path}", "--smoke", f"--site={tmp_path / 'site'}"])
  assert code == 1
  records = json.loads((tmp_path / "steps.json").read_text())
  assert records["hangs"]["status"] == "timeout" and records["hangs"]["seconds"] < 30
  assert "killed after" in (tmp_path / "logs" / "hangs.log").read_text()
  assert records["raises"]["status"] == "failed" and "ZeroDivisionError" in records["raises"]["note"]
  assert (records["fine"]["status"], records["fine"]["note"]) == ("ok", "done")
  assert "| hangs | timeout |" in (tmp_path / "summary.md").read_text()


def test_missing_packages_without_wheels_say_what_is_missing(check_module, tmp_path, monkeypatch):
  monkeypatch.setattr(check_module, "missing_modules", lambda python, env: ["grain", "tensorboardX"])
  args = check_module.parse_args([f"--out={tmp_path}", f"--wheels={tmp_path / 'none'}"])
  check = check_module.Check(args=args, out=str(tmp_path), env=dict(os.environ))
  status, note = check_module.step_deps(check, check_module.STEPS[0])
  assert status == "failed" and "grain, tensorboardX" in note and "--build_wheels" in note
  assert json.loads((tmp_path / "deps.json").read_text())["missing_after"] == ["grain", "tensorboardX"]


def test_the_ratio_table_sets_mmlearns_epoch_beside_pytorchs(check_module):
  ours = [
    {"config": "avmnist_concat", "batch_size": 40, "epoch_examples_per_s": 3e3, "step_examples_per_s": 5e3},
    {"config": "default", "batch_size": 40, "step_examples_per_s": 1.0},
  ]
  theirs = [
    {"batch_size": 40, "examples_per_s": 2000.0, "device": "cuda"},
    {"batch_size": 512, "examples_per_s": 9e3, "device": "cuda"},
  ]
  table = check_module.torch_table(ours, theirs)
  assert "| 40 | 3,000 | 5,000 | 2,000 (cuda) | 1.50x |" in table
  assert "| 512 | - | - | 9,000 (cuda) | n/a |" in table
