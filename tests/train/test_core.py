"""Core v2 on tiny configs: EMA, dropout streams, BatchNorm state, configured evaluators, best checkpoint."""

import json
import os
import re

import jax
import numpy as np
import pytest

from conftest import max_diff, run_steps, with_task
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.errors import ConfigError
from mmlearn.runs import restore
from mmlearn.tasks import TASKS
from mmlearn.train import loop
from mmlearn.train.state import TrainState
from mmlearn.train.step import microbatch_chunks, train_step


def tiny_task_and_batches(config, num_batches=3):
  sources, _ = data.load_sources(
    "mmshapes", config="tiny", data_dir=config.dataset.data_dir, splits=("train",)
  )
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  it = pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16)
  return task, [next(it) for _ in range(num_batches)]


def test_ema_is_the_moving_average_of_the_parameters(tiny_config):
  task, batches = tiny_task_and_batches(tiny_config, 1)
  tx = optim.make_optimizer(tiny_config.optimizer, 10)
  variables = task.init(jax.random.PRNGKey(0), batches[0])
  par = parallel_lib.DataParallel("shard_map")
  decay = 0.75
  state = par.place_state(TrainState.create(variables, tx, jax.random.PRNGKey(1), ema=True))
  step = par.map(lambda s, b: train_step(s, b, task=task, tx=tx, par=par, ema_decay=decay), sharded_args=(1,))
  for batch in batches * 3:
    before = jax.device_get(state.ema_params)
    state, _ = step(state, par.shard(batch))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, before, jax.device_get(state.params))
    assert max_diff(jax.device_get(state.ema_params), expected) < 1e-6
  assert max_diff(jax.device_get(state.ema_params), jax.device_get(state.params)) > 1e-4
  assert state.variables(ema=True)["params"] is state.ema_params
  assert state.variables()["params"] is state.params


def test_microbatches_give_the_whole_batch_update(tiny_config):
  task, batches = tiny_task_and_batches(tiny_config)
  tx = optim.make_optimizer(tiny_config.optimizer, 10)
  variables = task.init(jax.random.PRNGKey(0), batches[0])
  par = parallel_lib.DataParallel("shard_map")
  whole, whole_losses = run_steps(par, task, tx, variables, batches)
  chunked, chunked_losses = run_steps(par, task, tx, variables, batches, microbatch_size=8)
  # Sums of 4 chunk means instead of one mean over 32: the same update up to float32 rounding.
  assert max_diff(whole, chunked) < 1e-5
  np.testing.assert_allclose(chunked_losses, whole_losses, rtol=1e-5)
  assert max_diff(whole, variables) > 1e-3  # The steps moved the parameters: the comparison means something.
  with pytest.raises(ConfigError, match="does not divide the per-device batch of 32"):
    run_steps(par, task, tx, variables, batches[:1], microbatch_size=12)


def test_microbatches_are_refused_where_chunks_change_the_loss():
  assert TASKS.get("classification").separable_loss and TASKS.get("mvae").separable_loss
  assert TASKS.get("flow").separable_loss
  retrieval = TASKS.get("retrieval")  # Contrastive: chunks cache gradients (tests/train/test_grad_cache.py).

  class Coupled:  # A loss that couples a batch's examples, with no way to chunk it.
    separable_loss = False

  with pytest.raises(ConfigError, match="couples the examples"):
    microbatch_chunks(8, 32, Coupled(), {})  # pyright: ignore[reportArgumentType]
  with pytest.raises(ConfigError, match=r"batch statistics \(batch_stats\)"):
    microbatch_chunks(8, 32, TASKS.get("classification"), {"batch_stats": {}})
  assert microbatch_chunks(0, 32, retrieval, {}) == 1  # Off, or a chunk as large as the batch.
  assert microbatch_chunks(32, 32, retrieval, {}) == 1
  assert microbatch_chunks(8, 32, TASKS.get("classification"), {}) == 4


def test_dropout_gets_a_fresh_key_per_step_and_replays_under_the_same_rng(tiny_config):
  tiny_config.model.modalities.image.dropout = 0.5
  task, batches = tiny_task_and_batches(tiny_config, 1)
  tx = optim.make_optimizer(tiny_config.optimizer, 10)
  variables = task.init(jax.random.PRNGKey(0), batches[0])
  par = parallel_lib.DataParallel("shard_map")
  first, losses = run_steps(par, task, tx, variables, batches * 2)
  again, losses_again = run_steps(par, task, tx, variables, batches * 2)
  assert losses == losses_again and max_diff(first, again) == 0.0
  # The same batch twice from the same parameters draws different masks: different losses at step 1
  # than without dropout (the mask is the only difference), and the two steps' masks differ.
  tiny_config.model.modalities.image.dropout = 0.0
  plain = TASKS.get("classification")(tiny_config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  _, plain_losses = run_steps(par, plain, tx, variables, batches * 2)
  assert losses[0] != plain_losses[0]


def test_batch_norm_statistics_are_trained_state_and_used_in_evaluation(tiny_config):
  tiny_config.model.modalities.image.batch_norm = True
  task, batches = tiny_task_and_batches(tiny_config)
  tx = optim.make_optimizer(tiny_config.optimizer, 10)
  variables = task.init(jax.random.PRNGKey(0), batches[0])
  assert "batch_stats" in variables
  final, _ = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, variables, batches)
  moved = max_diff(final["batch_stats"], jax.device_get(variables["batch_stats"]))
  assert moved > 1e-3  # Running statistics followed the batches.
  batch = {k: v for k, v in batches[0].items()}
  logits = np.asarray(task.logits(final, batch))
  stale = np.asarray(task.logits({**final, "batch_stats": variables["batch_stats"]}, batch))
  assert np.abs(logits - stale).max() > 1e-4  # Evaluation reads the trained statistics.


def test_unknown_or_misapplied_evaluators_are_config_errors(tiny_config, tmp_path):
  cases = {
    "unknown evaluator 'nope'": {"type": "nope", "split": "validation"},
    "does not apply to this task (it needs a ExampleLosses)": {"type": "loss", "split": "validation"},
    "unknown option(s) ['colour']": {"type": "classification", "split": "validation", "colour": 1},
    "needs a 'type'": {"split": "validation"},
  }
  for message, entry in cases.items():
    tiny_config.evals = {"val": entry}
    with pytest.raises(ConfigError, match=re.escape(message)):
      loop.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # A refused new run leaves no workdir behind.


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_scheduled_evaluators_and_the_best_validation_checkpoint(tiny_config, tmp_path):
  tiny_config.num_train_steps = 8
  tiny_config.evals = {
    "val": {"type": "classification", "split": "validation", "every_steps": 2},
    "test": {"type": "classification", "split": "test"},
  }
  tiny_config.select_metric = "validation/loss"
  results = loop.train_and_evaluate(tiny_config, str(tmp_path))
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val_steps = [line["step"] for line in lines if "validation/loss" in line]
  assert val_steps == [2, 4, 6, 8]
  assert [line["step"] for line in lines if "test/loss" in line] == [8]
  losses = {line["step"]: line["validation/loss"] for line in lines if "validation/loss" in line}
  best_step = min(losses, key=losses.get)
  assert results["best/step"] == best_step
  record = json.loads((tmp_path / "best.json").read_text())
  assert record == {"metric": "validation/loss", "step": best_step, "value": pytest.approx(losses[best_step])}
  assert os.listdir(tmp_path / "best") == [str(best_step)]
  assert restore.reported_checkpoints(tiny_config, str(tmp_path)) == "best"  # What the tools evaluate.
  assert restore.reported_checkpoints(tiny_config, str(tmp_path / "cut_off")) == "checkpoints"  # No best yet.
  tiny_config.select_metric = ""
  assert restore.reported_checkpoints(tiny_config, str(tmp_path)) == "checkpoints"
  assert results["best/validation/loss"] == pytest.approx(losses[best_step], rel=1e-6)
  assert 0 <= results["best/test/accuracy"] <= 1


def test_select_metric_must_name_an_evaluated_split(tiny_config, tmp_path):
  tiny_config.select_metric = "valid/accuracy"
  with pytest.raises(ConfigError, match="names no evaluated split"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_a_dataset_without_labels_trains_a_task_that_needs_none(tiny_config, tmp_path, monkeypatch):
  """Retrieval pairs need no labels: strip the label feature from every split and train."""
  real_load = data.load_sources

  class Unlabelled:
    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitem__(self, index):
      example = self.source[index]
      if isinstance(index, int):
        return {k: v for k, v in example.items() if k != "label"}
      return [{k: v for k, v in e.items() if k != "label"} for e in example]

    def __getitems__(self, indices):
      return [self[int(i)] for i in indices]

  def load_without_labels(*args, **kwargs):
    sources, info = real_load(*args, **kwargs)
    return {split: Unlabelled(source) for split, source in sources.items()}, info

  monkeypatch.setattr(data, "load_sources", load_without_labels)
  config = with_task(tiny_config, "retrieval")
  config.dataset.eval_splits = ("test",)
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert 0 <= results["test/pair/image_to_text/R@1"] <= 1


def test_a_select_metric_no_evaluator_reports_is_a_config_error(tiny_config, tmp_path):
  tiny_config.select_metric = "validation/acuracy"  # A typo: the split is evaluated, the metric is not.
  with pytest.raises(ConfigError, match="select_metric 'validation/acuracy' was never reported"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))
