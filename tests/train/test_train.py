"""The training core on tiny configs: learning, checkpoint/resume, config errors (also test_reliability)."""

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_steps
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.errors import ConfigError
from mmlearn.tasks import TASKS
from mmlearn.train import loop


def saved_params(workdir: str, step: int | None = None):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
  step = manager.latest_step() if step is None else step
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return step, state["params"]


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.e2e  # Trains 15-20 steps.
def test_steps_lower_the_loss_on_a_fixed_batch(tiny_config):
  config = tiny_config
  sources, info = data.load_sources("mmshapes", config="tiny", data_dir=config.dataset.data_dir)
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  batch = next(pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16))
  config.optimizer.update(name="adam", learning_rate=0.01, warmup_steps=0)
  tx = optim.make_optimizer(config.optimizer, 100)
  params = task.init(jax.random.PRNGKey(0), batch)
  _, losses = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, params, [batch] * 20)
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_train_and_evaluate_writes_logs_and_metrics(tiny_config, tmp_path):
  """The reported metrics are those of the saved parameters: recomputed here from the checkpoint's
  logits on every example of each split."""
  results = loop.train_and_evaluate(tiny_config, str(tmp_path))
  sources, info = data.load_sources("mmshapes", config="tiny", data_dir=tiny_config.dataset.data_dir)
  task = TASKS.get("classification")(tiny_config, info=info, vocab_size=data.vocab_size("mmshapes"))
  _, params = saved_params(str(tmp_path))
  for split in ("validation", "test"):
    batch = next(pipeline.eval_batches(sources[split], batch_size=len(sources[split]), max_tokens=16))
    logits = np.asarray(task.logits({"params": params}, batch), np.float64)
    labels = batch["label"]
    # Another program computes these logits (another batch size, no device mapping), so a near-tie may
    # flip one prediction: one example's worth of tolerance.
    assert results[f"{split}/accuracy"] == pytest.approx(
      np.mean(logits.argmax(1) == labels), abs=1 / len(labels)
    )
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert results[f"{split}/loss"] == pytest.approx(
      -log_probs[np.arange(len(labels)), labels].mean(), rel=1e-5
    )
    assert len([k for k in results if k.startswith(f"{split}/class_recall/")]) == 16
    recalls = [results[f"{split}/class_recall/{name}"] for name in info.features["label"].names]
    assert results[f"{split}/balanced_accuracy"] == pytest.approx(np.nanmean(recalls))
    assert results[f"{split}/confusion_matrix"].counts.sum() == len(labels)
    assert (tmp_path / f"confusion_{split}.png").stat().st_size > 0
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if "train/loss" in line] == [2, 4, 6]
  assert lines[-1]["test/accuracy"] == pytest.approx(results["test/accuracy"])
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 32
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  assert saved_params(str(tmp_path))[0] == 6


class Preempted(Exception):
  pass


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_interrupted_run_resumes_to_identical_parameters(tiny_config, tmp_path):
  tiny_config.num_train_steps = 8
  tiny_config.checkpoint_every_steps = 3
  loop.train_and_evaluate(tiny_config, str(tmp_path / "straight"))

  def preempt(step, metrics):
    if step == 4:  # After the step-3 checkpoint, before the step-6 one: steps 4..? are lost.
      raise Preempted

  with pytest.raises(Preempted):
    loop.train_and_evaluate(tiny_config, str(tmp_path / "resumed"), hooks=[preempt])
  assert saved_params(str(tmp_path / "resumed"))[0] == 3
  loop.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  step_a, params_a = saved_params(str(tmp_path / "straight"))
  step_b, params_b = saved_params(str(tmp_path / "resumed"))
  assert step_a == step_b == 8
  assert_trees_equal(params_a, params_b)


@pytest.mark.parametrize(
  "field, value, error, message",
  [
    ("classification.fusion", "nope", ValueError, "unknown fusion 'nope'"),
    ("optimizer.name", "adagrad9", ValueError, "unknown optimizer 'adagrad9'"),
    ("dataset.name", "imagenet42", ValueError, "unknown dataset 'imagenet42'"),
    ("parallel.mode", "xmap", ValueError, "unknown parallel.mode 'xmap'"),
    ("model.modalities.image.encoder", "vit9", ValueError, "unknown encoder 'vit9'"),
    ("batch_size", 0, ValueError, "'batch_size' must be positive"),
    ("model.modalities.image.widths", (8,) * 6, ValueError, "too small to pool"),
  ],
)
def test_bad_config_values_are_named(tiny_config, tmp_path, field, value, error, message):
  node = tiny_config
  *parents, leaf = field.split(".")
  for name in parents:
    node = node[name]
  node[leaf] = value
  with pytest.raises(error, match=message):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


def test_modality_the_dataset_lacks_is_named(tiny_config, tmp_path):
  tiny_config.model.modalities.audio = {"encoder": "cnn"}
  with pytest.raises(ConfigError, match="no input for modality 'audio'"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


def test_keys_added_or_mistyped_in_config_files_are_rejected(tiny_config, tmp_path):
  tiny_config.optimizer.learnig_rate = 0.1
  with pytest.raises(ValueError, match="unknown config key 'optimizer.learnig_rate'"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))
  del tiny_config.optimizer["learnig_rate"]
  as_dict = tiny_config.to_dict()
  as_dict["num_epochs"] = "three"  # A config file that builds its own ConfigDict escapes type safety.
  with pytest.raises(ConfigError, match="config key 'num_epochs' should be float, got str"):
    loop.train_and_evaluate(ml_collections.ConfigDict(as_dict), str(tmp_path))
