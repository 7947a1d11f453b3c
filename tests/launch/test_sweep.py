"""Sweeps: get_sweep helpers, variant names, the launcher's skip/resume/failure logic, scripts/sweep.py."""

import csv
import json
import os
import re
import shutil
import sys
import types

import pytest

from conftest import REPO, main_in_process, run_python
from mmlearn.config import files as config_files
from mmlearn.errors import ConfigError
from mmlearn.launch import local as launcher
from mmlearn.launch import sweep

H = sweep.HELPERS
LR = H.sweep("optimizer.learning_rate", [0.1, 0.3])
SEED = H.sweep("seed", [0, 1])


def test_sweep_and_product_vary_the_first_sweep_slowest():
  assert LR == [{"optimizer.learning_rate": 0.1}, {"optimizer.learning_rate": 0.3}]
  assert [(d["optimizer.learning_rate"], d["seed"]) for d in H.product(LR, SEED)] == [
    (0.1, 0),
    (0.1, 1),
    (0.3, 0),
    (0.3, 1),
  ]
  assert H.product([LR, SEED]) == H.product(LR, SEED)  # Sweeps as arguments or as one list.


def test_zip_pairs_and_chain_concatenates():
  assert H.zip(LR, SEED) == [
    {"optimizer.learning_rate": 0.1, "seed": 0},
    {"optimizer.learning_rate": 0.3, "seed": 1},
  ]
  assert H.chain(LR, [{}], SEED) == [*LR, {}, *SEED]
  nested = H.chain(
    H.product(LR, H.sweep("classification.fusion", ["sum"])), [{"classification.fusion": "late"}]
  )
  assert len(nested) == 3 and nested[-1] == {"classification.fusion": "late"}


def test_zip_of_different_lengths_and_overlapping_keys_are_errors():
  with pytest.raises(ConfigError, match=r"h\.zip: the sweeps have different lengths \[2, 3\]"):
    H.zip(LR, H.sweep("seed", [0, 1, 2]))
  with pytest.raises(ConfigError, match=r"h\.product: more than one sweep sets \['seed'\]"):
    H.product(SEED, SEED)
  with pytest.raises(ConfigError, match="a sweep is a list of override dicts"):
    H.chain(LR, [0.1])


def test_variant_names_are_readable_safe_and_stable():
  assert (
    sweep.variant_name({"optimizer.learning_rate": 0.1, "seed": 1}) == "optimizer.learning_rate=0.1,seed=1"
  )
  assert sweep.variant_name({}) == "base"
  odd = sweep.variant_name({"classification.fusion": "a/b c"})
  assert re.fullmatch(
    r"classification\.fusion=a_b_c-[0-9a-f]{8}", odd
  )  # Sanitised, with a hash of the original.
  assert (
    odd
    == sweep.variant_name({"classification.fusion": "a/b c"})
    != sweep.variant_name({"classification.fusion": "a_b_c"})
  )
  long = sweep.variant_name({"k": "x" * 500})
  assert len(long) <= sweep.MAX_NAME and long != sweep.variant_name({"k": "x" * 501})


def test_expand_names_variants_and_rejects_bad_sweeps():
  module = types.SimpleNamespace(__file__="x.py", get_sweep=lambda h: h.product(LR, SEED))
  assert list(sweep.expand(module))[:2] == [
    "optimizer.learning_rate=0.1,seed=0",
    "optimizer.learning_rate=0.1,seed=1",
  ]
  for get_sweep, message in [
    (lambda h: h.chain(LR, LR), "lists the variant 'optimizer.learning_rate=0.1' twice"),
    (lambda h: [], "not a non-empty list"),
    (lambda h: [{1: 2}], "a sweep is a list of override dicts"),
  ]:
    with pytest.raises(ConfigError, match=re.escape(message)):
      sweep.expand(types.SimpleNamespace(__file__="x.py", get_sweep=get_sweep))
  with pytest.raises(ConfigError, match="defines no get_sweep"):
    sweep.expand(types.SimpleNamespace(__file__="x.py"))


def test_load_reports_unknown_keys_as_config_errors(tmp_path):
  """config_files reports an unknown key as a KeyError (as `--config.KEY` does); a sweep says ConfigError."""
  typo = "from configs.tiny import get_config\n\ndef get_sweep(h):\n  return h.sweep('optimizer.lr', [0.1])\n"
  (tmp_path / "typo.py").write_text(typo)
  message = "unknown config key 'optimizer.lr' in the sweep variant 'optimizer.lr=0.1'"
  with pytest.raises(ConfigError, match=re.escape(message)):
    sweep.load(str(tmp_path / "typo.py"), {})
  with pytest.raises(ConfigError, match="unknown config key 'optimizr.x'"):
    sweep.load(os.path.join(REPO, "configs/sweeps/mmshapes_lr.py"), {"optimizr.x": "1"})


def test_the_projects_sweep_configs_expand_as_their_docstrings_say():
  imbalance = config_files.load_module(os.path.join(REPO, "configs/sweeps/mmshapes_imbalance.py"))
  names = list(sweep.expand(imbalance))
  assert len(names) == 6 * 2 * 2 and len(set(names)) == len(names)
  assert (
    "classification.loss=cross_entropy,classification.sampler=class_balanced,optimizer.learning_rate=0.3,seed=1"
    in names
  )
  missing = list(
    sweep.expand(config_files.load_module(os.path.join(REPO, "configs/sweeps/avmnist_missing.py")))
  )
  assert len(missing) == 8 and all("imputation=generative" in n for n in missing[-2:])  # Generative last.
  assert {n.split(",")[0] for n in missing} == {
    "missing.modality_dropout=0.0",
    "missing.modality_dropout=0.5",
  }


def test_error_line_prefers_the_trainers_error_line():
  assert launcher.error_line("I0 log\nerror: ConfigError: bad\nI1 more\n", 1) == "error: ConfigError: bad"
  # Any type name: the project's errors and OSErrors are both reported as one `error:` line.
  for line in ("error: DataError: bad", "error: FileNotFoundError: 'x': No such file or directory"):
    assert launcher.error_line(f"I0 log\n{line}\n", 1) == line
  assert launcher.error_line("Traceback...\nRuntimeError: boom\n", 1) == "RuntimeError: boom"
  assert launcher.error_line("", -9) == "exit status -9"


# A stand-in for `python -m mmlearn.main`: logs each call's flags, fails on fusion "nope", else evaluates.
FAKE_TRAINER = """
import json, os, sys
args = dict(a[2:].partition("=")[::2] for a in sys.argv[1:])
workdir = args["workdir"]
with open(os.path.join(workdir, "calls"), "a") as f:
  f.write(" ".join(sys.argv[1:]) + "\\n")
if args.get("config.classification.fusion") == "nope":
  sys.exit(print("I0 some log line\\nerror: ConfigError: unknown fusion 'nope'", file=sys.stderr) or 1)
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
  f.write(json.dumps({"step": 2, "train/loss": 1.0}) + "\\n")
  f.write(json.dumps({"step": 2, "test/accuracy": float(args["config.optimizer.learning_rate"])}) + "\\n")
"""


def test_launcher_skips_finished_resumes_cut_off_and_records_failures(tmp_path):
  (tmp_path / "fake.py").write_text(FAKE_TRAINER)
  variants = {sweep.variant_name(o): o for o in H.chain(LR, [{"classification.fusion": "nope"}])}
  root = tmp_path / "root"
  messages = []

  def run():
    trainer = [sys.executable, str(tmp_path / "fake.py")]
    return launcher.run_sweep("c.py", str(root), variants, parallel=2, trainer=trainer, log=messages.append)

  def calls(name):
    return len((root / name / "calls").read_text().splitlines())

  good, other, bad = variants
  records = run()
  assert [r["status"] for r in records] == ["done", "done", "failed"]
  assert records[0]["metrics"]["test/accuracy"] == 0.1 and records[1]["metrics"]["test/accuracy"] == 0.3
  assert records[2]["error"] == "error: ConfigError: unknown fusion 'nope'"
  assert json.loads((root / good / "done.json").read_text())["metrics"]["test/accuracy"] == 0.1
  assert not (root / bad / "done.json").exists()

  (root / other / "done.json").unlink()  # `other` was cut off: it has checkpoints but no marker.
  (root / other / "checkpoints").mkdir()
  assert launcher.state(str(root / good)) == "finished" and launcher.state(str(root / other)) == "cut off"
  records = run()
  assert [r["skipped"] for r in records] == [True, False, False]
  assert (calls(good), calls(other), calls(bad)) == (1, 2, 2)
  assert f"{other}: resuming" in messages and records[1]["status"] == "done"


def test_extend_reruns_finished_variants_with_allow_config_changes(tmp_path):
  """A sweep whose config grew trains on from each finished variant; the wall time adds both runs'."""
  (tmp_path / "fake.py").write_text(FAKE_TRAINER)
  variants = {sweep.variant_name(o): o for o in LR}
  root = tmp_path / "root"
  trainer = [sys.executable, str(tmp_path / "fake.py")]
  launcher.run_sweep("c.py", str(root), variants, trainer=trainer, log=print)
  for name in variants:  # Pretend each first run took 1,000 s.
    record = json.loads((root / name / "done.json").read_text())
    (root / name / "done.json").write_text(json.dumps(record | {"wall_s": 1000.0}))
  records = launcher.run_sweep("c.py", str(root), variants, trainer=trainer, log=print, extend=True)
  assert [(r["status"], r["skipped"]) for r in records] == [("done", False)] * 2
  for name, record in zip(variants, records, strict=True):
    first, second = (root / name / "calls").read_text().splitlines()
    assert "--allow_config_changes" not in first and second == f"--allow_config_changes {first}"
    assert 1000.0 < record["wall_s"] < 1060.0
    assert json.loads((root / name / "done.json").read_text())["wall_s"] == record["wall_s"]


def test_launcher_fails_a_variant_that_exits_0_without_an_evaluation(tmp_path):
  records = launcher.run_sweep(
    "c.py", str(tmp_path), {"a": {}}, trainer=[sys.executable, "-c", "pass"], log=print
  )
  assert records[0]["status"] == "failed" and "metrics.jsonl" in records[0]["error"]


TINY_SWEEP = """
from configs import tiny


def get_config(fusion="concat"):
  config = tiny.get_config()
  config.classification.fusion = fusion
  config.num_train_steps = 4
  return config


def get_sweep(h):
  return h.chain(h.sweep("optimizer.learning_rate", [0.05, 0.1]), [{"classification.fusion": "nope"}])
"""


def sweep_script(tmp_path, config, *flags, data_dir=None):
  env = {"MMLEARN_DATA_DIR": data_dir} if data_dir else None
  return run_python(
    ["scripts/sweep.py", f"--config={config}", f"--workdir={tmp_path / 'root'}", *flags], env=env
  )


@pytest.mark.e2e
def test_sweep_end_to_end_with_a_failing_variant_then_skip_and_resume(data_dir, tmp_path):
  """Two tiny variants train (2 at once, config variant `:sum`); a bad value fails alone; a rerun resumes."""
  (tmp_path / "tiny_sweep.py").write_text(TINY_SWEEP)
  result = sweep_script(tmp_path, f"{tmp_path}/tiny_sweep.py:sum", "--parallel=2", data_dir=data_dir)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.splitlines()[-1].startswith("error: 1 of 3 variants failed")
  root = tmp_path / "root"
  rows = {r["variant"]: r for r in csv.DictReader(open(root / "summary.csv"))}  # noqa: SIM115
  good, other, bad = (
    "optimizer.learning_rate=0.05",
    "optimizer.learning_rate=0.1",
    "classification.fusion=nope",
  )
  assert [rows[v]["status"] for v in (good, other, bad)] == ["done", "done", "failed"]
  assert "unknown fusion 'nope'" in rows[bad]["error"] and rows[bad]["test/accuracy"] == ""
  final = json.loads((root / good / "metrics.jsonl").read_text().splitlines()[-1])
  assert float(rows[good]["test/accuracy"]) == final["test/accuracy"] and final["step"] == 4
  config = json.loads((root / good / "config.json").read_text())
  assert config["optimizer"]["learning_rate"] == 0.05 and config["classification"]["fusion"] == "sum"
  assert "failed: ConfigError: unknown fusion 'nope'" in (root / "summary.md").read_text()
  assert "Traceback" not in (root / bad / "log.txt").read_text()  # A config mistake is one line, not a bug.
  assert (root / "summary.png").stat().st_size > 0

  # Cut `other` off after its step-2 checkpoint; the rerun skips `good` and resumes `other` from step 2.
  (root / other / "done.json").unlink()
  shutil.rmtree(root / other / "checkpoints" / "4")
  before = {v: (root / v / "metrics.jsonl").read_text() for v in (good, other)}
  assert sweep_script(tmp_path, f"{tmp_path}/tiny_sweep.py:sum", data_dir=data_dir).returncode == 1
  assert (root / good / "metrics.jsonl").read_text() == before[good]
  lines = [json.loads(line) for line in (root / other / "metrics.jsonl").read_text().splitlines()]
  # The records past step 2 are replaced: the restart marker, one train line (steps 3-4), the evaluation.
  assert [line["step"] for line in lines] == [2, 2, 4, 4] and lines[1] == {"step": 2, "resumed_from": 2}
  assert (root / other / "done.json").exists()


def sweep_in_process(capsys, tmp_path, config, *flags):
  """(status, stderr, stdout) of `scripts/sweep.py` run in this process (no training is started)."""
  argv = [f"--config={config}", f"--workdir={tmp_path / 'root'}", *flags]
  return main_in_process(argv, capsys, script="scripts/sweep.py", stdout=True)


def test_dry_run_lists_variants_and_commands(capsys, tmp_path):
  status, stderr, stdout = sweep_in_process(
    capsys, tmp_path, "configs/sweeps/mmshapes_lr.py:sum", "--dry_run", "--override=num_epochs=2"
  )
  assert status == 0, stderr[-3000:]
  assert stdout.splitlines()[-1] == "6 variants"
  assert "optimizer.learning_rate=0.3,seed=1 (new)" in stdout
  assert "--config=configs/sweeps/mmshapes_lr.py:sum" in stdout and "--config.num_epochs=2" in stdout
  assert not os.path.exists(tmp_path / "root")


@pytest.mark.parametrize(
  "config, flags, message",
  [
    ("configs/tiny.py", [], "defines no get_sweep(h)"),
    ("{tmp}/typo.py", [], "unknown config key 'optimizer.lr' in the sweep variant 'optimizer.lr=0.1'"),
    ("configs/sweeps/mmshapes_lr.py", ["--override=optimizr.x=1"], "unknown config key 'optimizr.x'"),
    (
      "configs/sweeps/mmshapes_lr.py",
      ["--override=seed=3"],
      "--override sets ['seed'], which the sweep varies",
    ),
    ("configs/nope.py", [], "no config file 'configs/nope.py'"),
    ("{tmp}/raises.py", [], "{tmp}/raises.py:4: ZeroDivisionError in get_sweep: division by zero"),
    ("configs/sweeps/mmshapes_lr.py", ["--launcher=slurm", "--extend"], "--extend is for --launcher=local"),
  ],
)
def test_bad_input_gives_one_error_line_and_exit_1(capsys, tmp_path, config, flags, message):
  typo = "from configs.tiny import get_config\n\ndef get_sweep(h):\n  return h.sweep('optimizer.lr', [0.1])\n"
  (tmp_path / "typo.py").write_text(typo)
  raises = "from configs.tiny import get_config\n\ndef get_sweep(h):\n  return [{'seed': 1 / 0}]\n"
  (tmp_path / "raises.py").write_text(raises)
  status, stderr, _ = sweep_in_process(capsys, tmp_path, config.format(tmp=tmp_path), *flags)
  assert status == 1
  [line] = stderr.strip().splitlines()
  assert line.startswith("error: ") and message.format(tmp=tmp_path) in line
  assert "Traceback" not in stderr
  assert not os.path.exists(tmp_path / "root")


def test_final_metrics_merge_the_last_steps_evaluation_and_best_lines(tmp_path):
  lines = [
    {"step": 4, "train/loss": 1.0},
    {"step": 4, "validation/accuracy": 0.5},
    {"step": 8, "resumed_from": 4},
    {"step": 8, "validation/accuracy": 0.7, "test/accuracy": 0.6},
    {"step": 8, "best/validation/accuracy": 0.7, "best/step": 8},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  assert launcher.final_metrics(str(tmp_path)) == {
    "step": 8,
    "validation/accuracy": 0.7,
    "test/accuracy": 0.6,
    "best/validation/accuracy": 0.7,
    "best/step": 8,
  }
