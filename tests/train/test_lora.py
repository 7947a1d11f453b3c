"""LoRA: adapters start at the base model, only they train, they merge as W + (alpha/rank) a @ b, and they
are checkpointed with the state. A tiny retrieval dual encoder on synthetic pairs (no dataset to build)."""

import re

import jax
import numpy as np
import pytest

from configs.retrieval import tiny
from conftest import run_steps
from mmlearn import optim
from mmlearn import parallel as parallel_lib
from mmlearn.config import checks
from mmlearn.errors import ConfigError
from mmlearn.runs import checkpoint
from mmlearn.tasks import TASKS
from mmlearn.train import lora
from mmlearn.train.prefetch import IteratorState
from mmlearn.train.state import TrainState

VOCAB = 40
TARGETS = "projection|encoder/dense"  # The image tower's dense layer and both projection heads.


def synthetic_batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 9, n)
  return {
    "image": rng.uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32),
    "text": rng.integers(1, VOCAB, (n, 8)).astype(np.int32),
    "text_mask": np.arange(8)[None, :] < lengths[:, None],
  }


def lora_config(rank=4, alpha=8.0, targets=TARGETS):
  config = tiny.get_config("clip")
  config.lora.update(rank=rank, alpha=alpha, targets=targets)
  config.optimizer.update(name="adam", learning_rate=1e-2, warmup_steps=0, schedule="constant")
  return config


def task_and_variables(config, batch):
  task = TASKS.get("retrieval")(config, vocab_size=VOCAB)
  init_rng = jax.random.PRNGKey(0)
  base = jax.device_get(dict(task.init(init_rng, batch)))
  return task, base, jax.device_get(lora.with_adapters(base, config, lora.adapter_rng(init_rng)))


def paths(tree):
  return {
    optim.parameter_path(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_adapters_start_at_the_base_model_and_merge_as_w_plus_scaled_ab():
  config, batch = lora_config(rank=4, alpha=6.0), synthetic_batch()
  task, base, variables = task_and_variables(config, batch)
  adapters = variables["params"][lora.KEY]
  assert set(adapters) == {
    "image_encoder/dense/kernel",
    "image_projection/kernel",
    "text_projection/kernel",
  }
  for path, adapter in adapters.items():
    fan_in, fan_out = paths(base["params"])[path].shape
    assert adapter["a"].shape == (fan_in, 4) and adapter["b"].shape == (4, fan_out)
    assert not adapter["b"].any() and 0.1 < adapter["a"].std() * 4 < 2  # std 1/rank, b = 0.
  merged = lora.merged(variables["params"])
  assert lora.KEY not in merged
  assert jax.tree.structure(merged) == jax.tree.structure(base["params"])
  assert all(
    np.array_equal(merged_leaf, paths(base["params"])[path]) for path, merged_leaf in paths(merged).items()
  )
  # The step-0 model is the base model exactly: the same embeddings, bit for bit.
  with_lora = task.embed({"params": merged}, batch)
  without = task.embed(base, batch)
  for name in without:
    np.testing.assert_array_equal(with_lora[name], without[name])

  # With b non-zero, each adapted kernel is W + (alpha / rank) a @ b (float64 reference).
  rng = np.random.default_rng(1)
  for adapter in adapters.values():
    adapter["b"] = rng.normal(size=adapter["b"].shape).astype(np.float32)
  merged, base_paths = paths(lora.merged(variables["params"])), paths(base["params"])
  for path, value in merged.items():
    if path in adapters:
      a, b = (adapters[path][k].astype(np.float64) for k in "ab")
      expected = base_paths[path] + 6.0 / 4 * a @ b
      np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
      assert np.abs(value - base_paths[path]).max() > 1e-2
    else:
      np.testing.assert_array_equal(value, base_paths[path])


def test_training_moves_only_the_adapters_and_lowers_the_loss():
  config, batch = lora_config(), synthetic_batch(16)
  config.optimizer.frozen = "lora/text_projection"  # optimizer.frozen still applies, on top of LoRA's.
  task, _, variables = task_and_variables(config, batch)
  tx = optim.make_optimizer(config.optimizer, 10, train_only=lora.trained(config))
  final, losses = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, variables, [batch] * 6)
  before, after = paths(variables["params"]), paths(final["params"])
  moved = {path for path in before if not np.array_equal(before[path], after[path])}
  assert moved == {
    f"lora/{kernel}/{name}"
    for kernel in ("image_encoder/dense/kernel", "image_projection/kernel")
    for name in "ab"
  }
  assert losses[-1] < losses[0] - 0.05, losses


def test_the_adapters_are_checkpointed_and_restored_with_the_state(tmp_path):
  config, batch = lora_config(), synthetic_batch()
  _, _, variables = task_and_variables(config, batch)
  tx = optim.make_optimizer(config.optimizer, 10, train_only=lora.trained(config))
  template = TrainState.create(variables, tx, jax.random.PRNGKey(1))
  trained = jax.tree.map(
    lambda x: x + 0.5 if np.ndim(x) == 2 else x, variables
  )  # Adapters (and kernels) moved.
  state = TrainState.create(trained, tx, jax.random.PRNGKey(1))
  saver = checkpoint.Checkpointer(str(tmp_path), keep=1)
  saver.save(3, state, IteratorState({"next_index": 3}))
  saver.close()
  reader = checkpoint.Checkpointer(str(tmp_path), keep=1, read_only=True)
  restored = reader.restore(3, template)
  reader.close()
  assert set(restored.params[lora.KEY]) == set(variables["params"][lora.KEY])
  for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_settings_are_one_line_config_errors():
  batch = synthetic_batch(4)
  with pytest.raises(ConfigError, match=re.escape("lora.targets 'q_proj' matches no 2-D kernel")) as error:
    task_and_variables(lora_config(targets="q_proj"), batch)
  assert "\n" not in str(error.value) and "image_projection/kernel" in str(error.value)
  with pytest.raises(ConfigError, match="not a regular expression"):
    checks.check(lora_config(targets="("))
  with pytest.raises(ConfigError, match="needs lora.targets"):
    checks.check(lora_config(targets=""))
  checks.check(lora_config(rank=0, targets=""))  # Off: nothing to check.
