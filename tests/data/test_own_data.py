"""Your own data: the `captioned` builder on a generated folder + manifest, a builder registered from a
module outside mmlearn, and the tools (`robustness.py`, `retrieve.py`) reading such runs back."""

import csv
import json
import logging
import os
import re
import shutil
import wave

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_python
from mmlearn import data, registry
from mmlearn.config import files as config_files
from mmlearn.data import captioned, progress, spectrogram
from mmlearn.errors import ConfigError, DataError
from mmlearn.runs import metric_writer
from mmlearn.train import loop

pytestmark = pytest.mark.e2e  # Processes, devices, a real Slurm or long training: see pyproject.toml.

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
SHAPES = ("square", "circle")


def draw(colour: str, shape: str, rng: np.random.Generator, size=(20, 24)) -> np.ndarray:
  """A coloured square or circle on dark noise, uint8 [H, W, 3]."""
  h, w = size
  y, x = np.mgrid[:h, :w]
  if shape == "square":
    inside = (abs(y - h / 2) < 6) & (abs(x - w / 2) < 6)
  else:
    inside = (y - h / 2) ** 2 + (x - w / 2) ** 2 < 49
  image = rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
  image[inside] = COLOURS[colour]
  return image


def write_folder(root, n: int, *, manifest="manifest.csv", split_column=False, audio=False) -> list[dict]:
  """`n` images and a manifest (CSV or JSON lines): caption `a <colour> <shape> w<i> w<i>`, label
  `<colour>` (a word w<i> seen twice in one caption only), splits train/validation/test cycling if asked."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  rows = []
  for i in range(n):
    colour, shape = list(COLOURS)[i % 2], SHAPES[i // 2 % 2]
    Image.fromarray(draw(colour, shape, rng)).save(os.path.join(root, "images", f"{i}.png"))
    row = {"image": f"images/{i}.png", "caption": f"a {colour} {shape} w{i} w{i}"}
    row["label" if not audio else "split"] = colour if not audio else captioned.SPLITS[i % 3]
    if split_column and not audio:
      row["split"] = captioned.SPLITS[i % 3]
    if audio:
      row["audio"] = f"audio/{i}.wav"
      write_wav(os.path.join(root, row["audio"]), 0.1 + 0.01 * i, rng)
    rows.append(row)
  path = os.path.join(root, manifest)
  with open(path, "w", newline="") as f:
    if manifest.endswith(".jsonl"):
      f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  return rows


def write_wav(path: str, seconds: float, rng: np.random.Generator) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  samples = (rng.normal(0, 3000, int(spectrogram.SAMPLE_RATE * seconds))).astype("<i2")
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(spectrogram.SAMPLE_RATE)
    w.writeframes(samples.tobytes())


def load(tmp_path, options, *, manual_dir="raw", **kwargs):
  return data.load_sources(
    "captioned",
    config="mine",
    data_dir=str(tmp_path / "tfds"),
    manual_dir=None if manual_dir is None else str(tmp_path / manual_dir),
    options=options,
    **kwargs,
  )


def dataset_section(tmp_path, options) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {"name": "captioned", "config": "mine", "data_dir": str(tmp_path / "tfds"), "manual_dir": None,
     "options": options}
  )  # fmt: skip


def test_captioned_builds_the_stated_splits_images_labels_and_tokens(tmp_path):
  rows = write_folder(tmp_path / "raw", 20)
  options = {"image_shape": (6, 8, 1), "split_fractions": (0.6, 0.2, 0.2), "split_seed": 3, "min_count": 2}
  sources, info = load(tmp_path, options)
  # The stated rule: permute with the seed, cut 12 / 4 / 4, keep manifest order within a split.
  order = np.random.default_rng(3).permutation(20)
  expected = {"train": order[:12], "validation": order[12:16], "test": order[16:]}
  for split, indices in expected.items():
    files = [sources[split][j]["image_file"].decode() for j in range(len(sources[split]))]
    assert files == [rows[i]["image"] for i in np.sort(indices)], split
  assert info.features["label"].names == ["blue", "red"]  # Sorted class names.
  example, row = sources["test"][0], rows[int(np.sort(expected["test"])[0])]
  assert example["label"] == ["blue", "red"].index(row["label"])
  with Image.open(tmp_path / "raw" / row["image"]) as image:
    reference = np.asarray(image.convert("L").resize((8, 6), Image.BILINEAR))  # (width, height)
  np.testing.assert_array_equal(example["image"], reference[..., None])
  # The vocabulary comes from the training captions only: w<i> is known exactly for the training rows.
  tokenizer = data.dataset_tokenizer(dataset_section(tmp_path, options))
  assert {f"w{i}" for i in range(20) if f"w{i}" in tokenizer.vocab} == {f"w{i}" for i in expected["train"]}
  assert (
    tokenizer.decode(example["tokens"])
    == f"a {row['caption'].split()[1]} {row['caption'].split()[2]} <unk> <unk>"
  )
  # Prepared once, it reads without its raw files, and other options prepare another directory.
  shutil.rmtree(tmp_path / "raw")
  again, _ = load(tmp_path, options, manual_dir=None)
  assert len(again["train"]) == 12
  assert sorted(os.listdir(tmp_path / "tfds" / "captioned")) == [
    captioned.config_name("mine", captioned.check_options(options))
  ]


def test_captioned_takes_given_splits_and_audio_from_a_jsonl_manifest(tmp_path):
  rows = write_folder(tmp_path / "raw", 9, manifest="m.jsonl", audio=True)
  sources, info = load(tmp_path, {"manifest": "m.jsonl", "image_shape": (8, 8, 3), "tokenizer": "subword"})
  assert "label" not in info.features  # No label column: a dataset for retrieval, not classification.
  for k, split in enumerate(captioned.SPLITS):
    assert [sources[split][j]["image_file"].decode() for j in range(3)] == [r["image"] for r in rows[k::3]]
  audio = sources["train"][0]["audio"]
  assert audio.shape == (spectrogram.SPEC_SIZE, spectrogram.SPEC_SIZE, 1) and audio.dtype == np.uint8
  assert audio.max() > audio.min()
  tokenizer = data.dataset_tokenizer(
    dataset_section(tmp_path, {"manifest": "m.jsonl", "image_shape": (8, 8, 3), "tokenizer": "subword"})
  )
  assert tokenizer.decode(sources["validation"][0]["tokens"]) == rows[1]["caption"]  # Subword: no <unk>.


def _missing_image(root):
  os.remove(os.path.join(root, "images", "2.png"))


def _corrupt_image(root):
  with open(os.path.join(root, "images", "4.png"), "wb") as f:
    f.write(b"not a png")


def _empty_caption(root):
  _edit_manifest(root, lambda text: text.replace("a blue circle w3 w3", ""))


def _wordless_caption(root):
  _edit_manifest(root, lambda text: text.replace("a blue circle w3 w3", "?!"))


def _unknown_column(root):
  _edit_manifest(root, lambda text: text.replace("caption", "captoin", 1))


def _edit_manifest(root, edit):
  path = os.path.join(root, "manifest.csv")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(edit(text))


@pytest.mark.parametrize(
  "damage, options, error, message",
  [
    (_missing_image, {}, DataError, r"manifest.csv:4: image .*images/2.png is missing"),
    (_corrupt_image, {}, DataError, r"manifest.csv:6: cannot decode image .*images/4.png"),
    (_empty_caption, {}, DataError, r"manifest.csv:5: no 'caption'"),
    (_wordless_caption, {}, DataError, r"manifest.csv:5: caption '\?!' has no words"),
    (_unknown_column, {}, DataError, r"header \['image', 'captoin', 'label'\] must name image, caption"),
    (None, {"image_size": 8}, ConfigError, r"unknown dataset.options \['image_size'\] of 'captioned'"),
    (None, {"split_fractions": (0.5, 0.5)}, ConfigError, "split_fractions must be 3 fractions"),
    (None, {"split_fractions": (0.9, 0.1, 0.0)}, DataError, r"6 rows leave no test examples"),
    (None, {"manifest": "nope.csv"}, FileNotFoundError, r"manifest .*nope.csv is missing"),
  ],
)
def test_bad_folders_and_options_are_one_line_errors_naming_the_row(
  tmp_path, damage, options, error, message
):
  write_folder(tmp_path / "raw", 6)
  if damage:
    damage(str(tmp_path / "raw"))
  with pytest.raises(error, match=message):
    load(tmp_path, {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25), **options})
  assert not list((tmp_path / "tfds").glob("captioned/*/1.0.0")), "a failed preparation looks prepared"


def test_a_changed_manifest_or_no_manual_dir_is_an_error(tmp_path):
  write_folder(tmp_path / "raw", 6)
  options = {"image_shape": (8, 8, 3), "split_fractions": (0.5, 0.25, 0.25)}
  with pytest.raises(ConfigError, match="set dataset.manual_dir"):
    load(tmp_path, options, manual_dir=None)
  load(tmp_path, options)
  _edit_manifest(str(tmp_path / "raw"), lambda text: text + "images/0.png,one more,red\n")
  with pytest.raises(DataError, match="manifest .*manifest.csv changed since .* was prepared"):
    load(tmp_path, options)


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
  config.dataset.options = ml_collections.ConfigDict({"image_shape": (16, 16, 3), "min_count": 2})
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


def test_progress_lines_show_count_and_eta_only_for_long_passes(monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  assert list(progress.track(range(5), "quick pass", 5)) == list(range(5))
  assert not caplog.records  # Shorter than QUIET_S: silent.
  monkeypatch.setattr(progress, "QUIET_S", 0.0)
  monkeypatch.setattr(progress, "EVERY_S", 0.0)
  assert list(progress.track(range(4), "evaluating test", 4, unit="batches")) == list(range(4))
  lines = [record.getMessage() for record in caplog.records]
  # Elapsed and ETA as H:MM:SS, whatever the machine's speed (a loaded CPU may take over a second).
  assert re.fullmatch(
    r"evaluating test: 1/4 batches \(25%\), elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d", lines[0]
  )
  assert len(lines) == 4 and re.fullmatch(r"evaluating test: done in \d+:\d\d:\d\d", lines[-1]), lines
