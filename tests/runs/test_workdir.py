"""What a run may do to its workdir: a refused run leaves nothing, the repository's files are never a
workdir, a failed write names its file, and a finished run started again evaluates without duplicating."""

import errno
import json
import os

import pytest

from conftest import REPO
from mmlearn.errors import ConfigError, WorkdirError
from mmlearn.runs import workdir
from mmlearn.train import loop


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda c: c.evals.update({"val": {"type": "nope", "split": "validation"}}), "unknown evaluator 'nope'"),
    (lambda c: c.optimizer.update(frozen="no_such_layer/"), "matches no parameter"),
    (lambda c: c.init_from.update(workdir="/nonexistent/run"), "is missing; is /nonexistent/run a training"),
    (lambda c: c.update(batch_size=1 << 20), "larger than the training split"),
  ],
)
def test_a_refused_new_run_leaves_no_workdir(tiny_config, tmp_path, change, message):
  change(tiny_config)
  run = tmp_path / "new" / "run"
  with pytest.raises((ConfigError, WorkdirError), match=message):
    loop.train_and_evaluate(tiny_config, str(run))
  assert not (tmp_path / "new").exists()  # Nor the parent directory the run made for it.


def test_a_refused_resume_keeps_the_existing_workdir(tiny_config, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "notes.txt").write_text("mine")
  tiny_config.evals = {"val": {"type": "nope", "split": "validation"}}
  with pytest.raises(ConfigError):
    loop.train_and_evaluate(tiny_config, str(run))
  assert sorted(os.listdir(run)) == [".lock", "notes.txt"]  # An existing directory is never removed.


@pytest.mark.parametrize("inside", ["configs", "configs/new_run", "docs/results/x", "."])
def test_a_workdir_in_the_repositorys_tracked_tree_is_refused(inside):
  with pytest.raises(WorkdirError, match="holds files of the repository"):
    workdir.prepare(os.path.join(REPO, inside))
  assert not os.path.exists(os.path.join(REPO, "configs", "new_run"))


def test_a_workdir_of_its_own_in_the_repository_is_accepted(tmp_path):
  assert workdir.tracked_files_under(os.path.join(REPO, "runs", "x")) == ""  # `runs/` is ignored by git.
  assert workdir.tracked_files_under(str(tmp_path)) == ""  # Outside the repository.


def test_a_full_disk_at_the_lock_names_the_lock_file(tmp_path, monkeypatch):
  def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "pwrite", full)
  with pytest.raises(OSError) as raised, workdir.exclusive(str(tmp_path)):
    pass
  assert raised.value.filename == os.path.join(str(tmp_path), ".lock")
  assert raised.value.errno == errno.ENOSPC


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_a_finished_run_started_again_replaces_its_evaluation(tiny_config, tmp_path):
  first = loop.train_and_evaluate(tiny_config, str(tmp_path))
  again = loop.train_and_evaluate(tiny_config, str(tmp_path))
  assert again["test/accuracy"] == first["test/accuracy"]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in records if r["step"] == 6 and "test/accuracy" in r]
  assert len(final) == 1  # Replaced, not appended after the restart marker.
  assert records[-2] == {"step": 6, "resumed_from": 6} and records[-1] is final[0]
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]  # Training records are kept.
