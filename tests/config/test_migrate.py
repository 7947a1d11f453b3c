"""Runs saved before version 3 are read in today's layout: never misread, or refused in one line.

`tests/fixtures/v2_config/*.json` are `config.json` files written by the code before task-owned sections
(commit 6170bad: every task's section in every run, `model.fusion`, `dataset.sampler`, the `elbo`
evaluator, LeNets without `batch_norm`). Each must read back as exactly the config today's config file
builds for the same run.
"""

import json
import os
import shutil

import pytest

from conftest import REPO
from mmlearn.config import files, migrate
from mmlearn.errors import ConfigError, WorkdirError
from mmlearn.runs import restore, workdir
from mmlearn.train import loop

FIXTURES = os.path.join(REPO, "tests", "fixtures", "v2_config")
# Each saved config and the config file (and evaluators) that make the same run today.
TODAY = {
  "classification": ("configs/tiny.py", None),
  "retrieval": ("configs/retrieval/tiny.py", None),
  "mvae": ("configs/mvae/tiny.py", {"val": {"type": "loss", "split": "validation", "every_steps": 20}}),
  "flow": ("configs/flow/tiny.py", None),
  "avmnist_plain": ("configs/avmnist/fusion.py:concat,towers=plain", None),
}


def saved(name):
  with open(os.path.join(FIXTURES, f"{name}.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("name", sorted(TODAY))
def test_a_version_2_config_reads_as_todays_config_of_the_same_run(name):
  spec, evals = TODAY[name]
  today = files.get_config(os.path.join(REPO, spec))
  if evals is not None:
    today.unlock()
    today.evals = evals
  upgraded = migrate.upgrade(saved(name))
  assert upgraded == workdir.as_json(today)
  assert not workdir.changed_keys(upgraded, workdir.as_json(today))


def test_only_the_runs_own_task_sections_are_kept():
  old = saved("classification")
  assert {"mvae", "flow", "retrieval"} <= set(old)  # Version 2 carried every task's section.
  upgraded = migrate.upgrade(old)
  assert {"classification", "missing"} <= set(upgraded)
  assert not {"mvae", "flow", "retrieval"} & set(upgraded)
  assert "fusion" not in upgraded["model"] and upgraded["classification"]["fusion"] == "concat"
  assert migrate.upgrade(saved("mvae"))["evals"]["val"]["type"] == "loss"
  lenet = migrate.upgrade(saved("avmnist_plain"))["model"]["modalities"]["image"]
  assert lenet["batch_norm"] is False  # The block version 2 gave a LeNet without the key.


def test_captioned_text_options_become_the_datasets_and_new_keys_get_their_defaults():
  old = saved("classification")
  assert "tokenizer" not in old["dataset"]  # Written before captions were tokenized in the pipeline.
  old["dataset"].update(
    name="captioned", options={"manifest": "m.csv", "tokenizer": "subword", "vocab_size": 500}
  )
  dataset = migrate.upgrade(old)["dataset"]
  assert dataset["options"] == {"manifest": "m.csv"}
  assert (dataset["tokenizer"], dataset["vocab_size"], dataset["min_count"]) == ("subword", 500, 1)
  plain = migrate.upgrade(saved("classification"))["dataset"]
  assert (plain["tokenizer"], plain["image_size"], plain["workers"]) == ("", 0, 0)  # As they read then.


def test_a_saved_config_that_names_no_known_task_is_refused_in_one_line():
  with pytest.raises(ConfigError, match="run/config.json names no task"):
    migrate.upgrade({"seed": 0}, where="run/config.json")
  with pytest.raises(ConfigError, match="run/config.json: unknown task 'translation'; known: classification"):
    migrate.upgrade({"task": "translation"}, where="run/config.json")


@pytest.fixture(scope="module")
def version_2_run(data_dir, tmp_path_factory):
  """A finished tiny run whose config.json is the one version 2 wrote for it (same parameters: the
  checkpoint format did not change)."""
  config = files.get_config(os.path.join(REPO, "configs/tiny.py"))
  config.unlock()
  config.dataset.data_dir = data_dir
  run = tmp_path_factory.mktemp("v2") / "run"
  results = loop.train_and_evaluate(config, str(run))
  old = saved("classification")
  old["dataset"]["data_dir"] = data_dir
  with open(run / "config.json", "w") as f:
    json.dump(old, f)
  return run, config, results


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_a_version_2_run_restores_resumes_and_is_evaluated(version_2_run, tmp_path):
  run, config, results = version_2_run
  restored = restore.read_config(str(run))
  assert "mvae" not in restored and restored.classification.fusion == "concat"
  _, _, task, variables = restore.load_run(restored, str(run), ("test",))
  assert task.summary_metric == "accuracy" and "params" in variables
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  again = loop.train_and_evaluate(config, str(copy))  # The same config: a resume, not a refusal.
  assert again["test/accuracy"] == results["test/accuracy"]
  with open(copy / "config.json") as f:
    assert "mvae" not in json.load(f)  # Written back in today's layout.


def test_a_version_2_run_with_another_config_is_still_refused(version_2_run):
  run, config, _ = version_2_run
  changed = config.copy_and_resolve_references()
  changed.classification.fusion = "sum"
  with pytest.raises(WorkdirError, match=r"classification.fusion \('concat' -> 'sum'\)"):
    loop.train_and_evaluate(changed, str(run))
