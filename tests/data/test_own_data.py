"""Your own data end to end: runs on a generated folder + manifest (the builder itself is tested in
test_captioned.py), a builder registered from a module outside mmlearn, and the tools (`robustness.py`,
`retrieve.py`) reading such runs back."""

import json
import logging
import os
import re

import numpy as np
import pytest
from folders import draw, write_folder
from PIL import Image

from conftest import REPO, run_python
from mmlearn import registry
from mmlearn.config import files as config_files
from mmlearn.errors import ConfigError
from mmlearn.runs import metric_writer
from mmlearn.train import loop

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.

# --- End to end: training and the tools ---------------------------------------------------------------

CONFIG = '''
"""A config outside configs/: the `captioned` builder on a generated folder (see docs/datasets.md)."""
import os

import ml_collections

from mmlearn.config.schema import get_config as defaults


HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(task="classification"):
  config = defaults(task)  # The core keys and the sections of `task`.
  config.dataset.name = "captioned"
  config.dataset.config = "shapes"
  config.dataset.manual_dir = os.path.join(HERE, "raw")
  config.dataset.data_dir = os.path.join(HERE, "tfds")
  config.dataset.options = ml_collections.ConfigDict({"image_shape": (16, 16, 3)})
  config.dataset.min_count = 2
  config.model.modalities.image.update(widths=(8,), dense=16)
  config.model.modalities.text.update(embed_dim=8, hidden=16)
  if task == "classification":
    config.classification.head_hidden = (16,)
  else:
    config.retrieval.embed_dim = 16
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_train_steps = 4
  config.optimizer.warmup_steps = 1
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  return config
'''


def test_own_folder_trains_a_classifier_and_retrieval_that_the_tools_read_back(tmp_path):
  write_folder(tmp_path / "raw", 40)
  (tmp_path / "my_config.py").write_text(CONFIG)
  runs = {}
  for task in ("classification", "retrieval"):
    config = config_files.get_config(f"{tmp_path / 'my_config.py'}:{task}")
    runs[task] = str(tmp_path / "runs" / task)
    results = loop.train_and_evaluate(config, runs[task])
    headline = "test/accuracy" if task == "classification" else "test/pair/image_to_text/R@1"
    assert 0 <= results[headline] <= 1, results
  record = json.loads((tmp_path / "runs" / "retrieval" / "metrics.jsonl").read_text().splitlines()[-1])
  assert "test/pair/image_to_text/R@1" in record  # metrics.jsonl keeps the names; TensorBoard gets R_at_1.

  result = run_python(["scripts/robustness.py", f"--workdir={runs['classification']}", "--nonoise"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"missing/text\s+area [.\d]+", result.stdout), result.stdout
  result = run_python(
    ["scripts/retrieve.py", f"--workdir={runs['retrieval']}", "--query=a red zebra", "--top_k=3"]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  hits = [line for line in result.stdout.splitlines() if re.match(r"\s*\d+\. #\d+", line)]
  assert len(hits) == 3 and all("image_file=images/" in hit and "label=" in hit for hit in hits), (
    result.stdout
  )
  assert "read as <unk>: zebra" in result.stdout  # The query used the dataset's open vocabulary.
  assert "Using custom data configuration" not in result.stderr


def test_a_builder_registered_outside_mmlearn_trains_and_robustness_reads_it_back(tmp_path, monkeypatch):
  # The template, copied into a package of the user's own, under a name unique to this test.
  package = tmp_path / "lab" / "my_lab_template_copy"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  with open(os.path.join(REPO, "mmlearn", "data", "template.py")) as f:
    (package / "datasets.py").write_text(f.read().replace('"my_folders"', '"outside_folders"').replace(
      "class MyFolders", "class OutsideFolders"))  # fmt: skip
  rng = np.random.default_rng(1)
  for split, count in (("train", 8), ("validation", 2), ("test", 2)):
    for label, name in enumerate(("cat", "dog")):
      os.makedirs(tmp_path / "raw" / split / name)
      for i in range(count):
        image = draw(("red", "blue")[label], "square", rng)
        Image.fromarray(image).save(tmp_path / "raw" / split / name / f"{i}.png")
  monkeypatch.syspath_prepend(str(tmp_path / "lab"))
  config = config_files.get_config(os.path.join(REPO, "configs", "mmshapes_image_only.py"))
  with config.unlocked():
    config.imports = ("my_lab_template_copy.datasets",)
    config.dataset.update(
      name="outside_folders", manual_dir=str(tmp_path / "raw"), data_dir=str(tmp_path / "tfds")
    )
    config.model.modalities.image.update(widths=(8,), dense=16)
    config.update(
      batch_size=8, eval_batch_size=8, num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2
    )
    config.optimizer.warmup_steps = 1
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0 <= results["test/accuracy"] <= 1
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["imports"] == ["my_lab_template_copy.datasets"]
  # A fresh process knows "outside_folders" only through the run's recorded imports.
  env = {"PYTHONPATH": os.pathsep.join([REPO, str(tmp_path / "lab")])}
  result = run_python(["scripts/robustness.py", f"--workdir={tmp_path / 'run'}", "--nonoise"], env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "missing/image" in result.stdout
  # Without the module on the path: one line naming it, no traceback.
  result = run_python(["scripts/robustness.py", f"--workdir={tmp_path / 'run'}", "--nonoise"])
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "error: ConfigError: config.imports: cannot import 'my_lab_template_copy.datasets'" in result.stderr


# --- Registration and metric names ---------------------------------------------------------------------


def test_imports_name_modules_and_a_missing_one_is_a_config_error(tmp_path, monkeypatch):
  (tmp_path / "lab_broken_dependency.py").write_text("import some_package_that_is_not_installed\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ConfigError, match="config.imports must be a tuple of module names"):
    registry.import_modules("my_lab.datasets")
  with pytest.raises(ConfigError, match="'my lab' is not a module name"):
    registry.import_modules(("my lab",))
  with pytest.raises(ConfigError, match="cannot import 'no_such_lab.datasets' .*PYTHONPATH"):
    registry.import_modules(("no_such_lab.datasets",))
  # The module exists but is broken: its own error, kept as it is (a bug to fix there, not a typo here).
  with pytest.raises(ModuleNotFoundError, match="some_package_that_is_not_installed"):
    registry.import_modules(("lab_broken_dependency",))


def test_tensorboard_gets_legal_tags_and_metrics_jsonl_the_names(tmp_path, caplog):
  from tensorboardX.proto.event_pb2 import Event

  caplog.set_level(logging.INFO)
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(3, {"test/pair/image_to_text/R@1": 0.5, "train/loss": 1.0, "odd name%": float("nan")})
  writer.close()
  record = json.loads((tmp_path / "metrics.jsonl").read_text())
  assert list(record) == ["step", "test/pair/image_to_text/R@1", "train/loss", "odd name%"]
  assert record["test/pair/image_to_text/R@1"] == 0.5 and np.isnan(record["odd name%"])
  (events_file,) = os.listdir(tmp_path / "tensorboard")
  raw, tags, values, position = (tmp_path / "tensorboard" / events_file).read_bytes(), [], [], 0
  while position < len(raw):
    length = int.from_bytes(raw[position : position + 8], "little")
    summary = Event.FromString(raw[position + 12 : position + 12 + length]).summary
    tags += [v.tag for v in summary.value]
    values += [v.simple_value for v in summary.value]
    position += 12 + length + 4
  # tensorboardX would have logged "illegal summary name" and written R_1: these are ours, already legal.
  assert tags == ["test/pair/image_to_text/R_at_1", "train/loss", "odd_name_"]
  assert values[:2] == [0.5, 1.0] and np.isnan(values[2])  # NaN is written, without x2num's warning.
  assert not [
    r.getMessage() for r in caplog.records if "illegal" in r.getMessage() or "NaN" in r.getMessage()
  ]
