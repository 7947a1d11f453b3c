"""Fine-tuning a released CLIP: LoRA adapters (only they train; export merges them) and contrastive
gradient caching (chunks give the full batch's update) on the pretrained towers themselves."""

import pathlib

import jax
import numpy as np
import pytest

from conftest import max_diff, run_steps
from mmlearn.config import files
from mmlearn.pretrained import checkpoint, export
from mmlearn.train import lora, setup

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "pretrained"
CLIP = FIXTURES / "clip_b"


def built_run(data_dir, mode, optimizer="adamw", **overrides):
  config = files.get_config(f"configs/pretrained/retrieval.py:ckpt={CLIP},mode={mode}")
  config.unlock()
  config.dataset.update(config="retrieval_tiny", data_dir=data_dir, eval_splits=())
  config.update(batch_size=8, num_train_steps=3, **overrides)
  config.optimizer.update(name=optimizer, learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
  return setup.build(config)


def batches(run, count):
  return [next(run.train_iter) for _ in range(count)]


@pytest.mark.e2e  # Builds and trains whole runs, as the other test here.
def test_lora_trains_only_its_adapters_and_export_merges_them(retrieval_tiny_data, tmp_path):
  run = built_run(retrieval_tiny_data[0], "lora")
  start = jax.device_get(run.state.variables())
  assert set(start["params"][lora.KEY]) and all("self_attn" in path for path in start["params"][lora.KEY])
  after, losses = run_steps(run.par, run.task, run.tx, start, batches(run, 3))
  assert np.isfinite(losses).all()
  for name in ("image_encoder", "text_encoder", "log_scale"):  # Towers frozen under LoRA.
    jax.tree.map(np.testing.assert_array_equal, after["params"][name], start["params"][name])
  assert max_diff(after["params"][lora.KEY], start["params"][lora.KEY]) > 0

  written = export.export(after["params"], run.towers, str(tmp_path / "export"))
  source, exported = checkpoint.read_tensors(CLIP), checkpoint.read_tensors(written)
  assert {k: (v.shape, v.dtype) for k, v in exported.items()} == {
    k: (v.shape, v.dtype) for k, v in source.items()
  }
  merged = lora.merged(after["params"])
  q_proj = merged["image_encoder"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  name = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
  np.testing.assert_array_equal(exported[name], np.asarray(q_proj).T)
  assert not np.array_equal(exported[name], source[name])  # The adapters moved it.
  untouched = "vision_model.encoder.layers.0.mlp.fc1.weight"
  np.testing.assert_array_equal(exported[untouched], source[untouched])


@pytest.mark.e2e
@pytest.mark.parametrize("chunk", [2, 4])
def test_gradient_caching_on_pretrained_towers_equals_the_full_batch(retrieval_tiny_data, chunk):
  """One step of a fine-tuned CLIP with `microbatch_size` (gradient caching) lands on the full batch's
  parameters: the in-batch negatives see the whole batch either way. Plain SGD, so the update is the
  gradient (Adam's first step would divide rounding noise by its own size). Tolerance: float32 rounding
  of the reordered sums, 1e-5 of the largest parameter change."""
  full = built_run(retrieval_tiny_data[0], "full", "sgd")
  cached = built_run(retrieval_tiny_data[0], "full", "sgd", microbatch_size=chunk)
  start = jax.device_get(full.state.variables())
  data = batches(full, 1)
  one, _ = run_steps(full.par, full.task, full.tx, start, data)
  two, _ = run_steps(cached.par, cached.task, cached.tx, start, data, microbatch_size=chunk)
  change = max_diff(one["params"], start["params"])
  assert change > 0 and max_diff(one["params"], two["params"]) <= 1e-5 * change + 1e-7
