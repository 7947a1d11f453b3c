"""Gradient caching: `microbatch_size` on a contrastive loss gives the whole batch's gradient.

A tiny retrieval dual encoder on synthetic pairs. Tolerances are float32 rounding: the cached gradient
sums the same terms as the full one in another order (chunked matmuls, a sum over chunks), so the two
agree to a few ulps of the largest gradient entry; we allow 1e-5 of it (plus 1e-6 absolute), far below
the difference naive chunk-averaging makes (over 100 times the tolerance), which shows the comparison
can fail.
"""

import json

import jax
import numpy as np
import optax
import pytest
from jax import lax

from configs.retrieval import tiny
from conftest import max_diff, run_python, run_steps
from mmlearn import parallel as parallel_lib
from mmlearn import rngs
from mmlearn.errors import ConfigError
from mmlearn.tasks import TASKS
from mmlearn.train import grad_cache
from mmlearn.train.step import accumulated_gradient, microbatch_chunks

VOCAB = 40
RTOL, ATOL = 1e-5, 1e-6  # Of the largest gradient entry; see the module docstring.


def synthetic_batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 9, n)
  return {
    "image": rng.uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32),
    "text": rng.integers(1, VOCAB, (n, 8)).astype(np.int32),
    "text_mask": np.arange(8)[None, :] < lengths[:, None],
  }


def tiny_task(loss, dropout=0.0):
  config = tiny.get_config(loss)
  config.model.modalities.image.dropout = dropout
  return config, TASKS.get("retrieval")(config, vocab_size=VOCAB)


def gradients(task, params, batch, dropout_rng=None):
  """{name: gradient} on one device: the full batch's and the cached ones (chunks of 2 and 4) and naive
  chunk-averaging's (chunks of 4); with dropout, the full batch's, the cached one (chunks of 4) and the
  reference that each chunk's own dropout key defines."""
  par = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])

  def per_device(params, batch):
    n = batch["image"].shape[0]

    def variables_of(p):
      return {"params": p}

    def objective(p, batch, example_rng, key):
      loss, metrics, _ = task.loss({"params": p}, batch, example_rng, dropout_rng=key)
      return loss, (metrics, {})

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    out = {"full": grad_fn(params, batch, rngs.example_keys(jax.random.PRNGKey(0), n), dropout_rng)[1]}
    for size in (4,) if dropout_rng is not None else (2, 4):
      out[f"cached_{size}"] = grad_cache.cached_gradient(
        task, variables_of, params, batch, dropout_rng, n // size
      )[1]
    example_rng = rngs.example_keys(jax.random.PRNGKey(0), n)
    if dropout_rng is None:
      out["naive_4"] = accumulated_gradient(grad_fn, params, (batch, example_rng), None, n // 4)[1]
    else:  # Chunk i's embeddings drop with fold_in(key, i), then one loss.

      def chunked_loss(p):
        chunks = jax.tree.map(lambda x: x.reshape(n // 4, 4, *x.shape[1:]), batch)
        parts = [
          task.embed_for_training(
            {"params": p}, {k: x[i] for k, x in chunks.items()}, jax.random.fold_in(dropout_rng, i)
          )
          for i in range(n // 4)
        ]
        embeddings = {k: jax.numpy.concatenate([part[k] for part in parts]) for k in parts[0]}
        return task.embedding_loss(p, embeddings)[0]

      out["dropout_reference_4"] = jax.grad(chunked_loss)(params)
    return lax.pmean(out, parallel_lib.AXIS)

  return jax.device_get(par.map(per_device, sharded_args=(1,))(params, par.shard(batch)))


@pytest.mark.parametrize(
  "loss", ["clip", pytest.param("siglip", marks=pytest.mark.e2e)]
)  # siglip: full suite.
def test_the_cached_gradient_is_the_full_batch_gradient(loss):
  _, task = tiny_task(loss)
  batch = synthetic_batch(16)
  params = task.init(jax.random.PRNGKey(0), batch)["params"]
  grads = gradients(task, params, batch)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["full"]))
  assert scale > 1e-2  # A real gradient.
  tolerance = RTOL * scale + ATOL
  for name in ("cached_2", "cached_4"):
    diff = max_diff(grads[name], grads["full"])
    print(f"{loss} {name}: max |cached - full| {diff:.3g} (gradient scale {scale:.3g})")
    assert diff < tolerance, (name, diff, scale)
  naive = max_diff(grads["naive_4"], grads["full"])
  print(f"{loss} naive chunk-averaging: max |naive - full| {naive:.3g}")
  assert naive > 100 * tolerance  # What the cache is for: the check can fail.
  # The temperature (and SigLIP's bias) get their gradient directly from the loss, not through the towers.
  assert abs(float(grads["cached_4"]["log_scale"] - grads["full"]["log_scale"])) <= RTOL * scale + ATOL


@pytest.mark.e2e  # The fast tier keeps the dropout-free comparison.
def test_dropout_draws_the_same_masks_when_embedding_and_when_pulling_back():
  _, task = tiny_task("clip", dropout=0.5)
  batch = synthetic_batch(16)
  params = task.init(jax.random.PRNGKey(0), batch)["params"]
  grads = gradients(task, params, batch, dropout_rng=jax.random.PRNGKey(7))
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["dropout_reference_4"]))
  assert max_diff(grads["cached_4"], grads["dropout_reference_4"]) < RTOL * scale + ATOL
  assert max_diff(grads["cached_4"], grads["full"]) > 1e-3 * scale  # Dropout did change the gradient.


def test_a_train_step_with_microbatches_equals_one_without():
  config, task = tiny_task("siglip")
  batches = [synthetic_batch(16, seed) for seed in range(2)]
  variables = task.init(jax.random.PRNGKey(0), batches[0])
  tx = optax.sgd(0.5)
  par = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])
  whole, whole_losses = run_steps(par, task, tx, variables, batches)
  cached, cached_losses = run_steps(par, task, tx, variables, batches, microbatch_size=4)
  assert max_diff(whole, variables) > 1e-3  # The steps moved the parameters.
  assert max_diff(cached, whole) < 1e-5, max_diff(cached, whole)
  np.testing.assert_allclose(cached_losses, whole_losses, rtol=1e-6)


def test_only_contrastive_tasks_without_batch_statistics_cache_gradients():
  retrieval = TASKS.get("retrieval")
  assert microbatch_chunks(4, 16, retrieval, {}) == 4
  with pytest.raises(ConfigError, match=r"batch statistics \(batch_stats\)"):
    microbatch_chunks(4, 16, retrieval, {"batch_stats": {}})

  class Coupled:  # Non-separable, and no way to chunk it.
    separable_loss = False

  with pytest.raises(ConfigError, match="couples the examples"):
    microbatch_chunks(4, 16, Coupled(), {})  # pyright: ignore[reportArgumentType]


@pytest.mark.e2e  # A subprocess with 4 fake devices.
def test_on_four_devices_the_cached_step_is_the_uncached_one():
  result = run_python(
    ["tests/train/grad_cache_multidevice_check.py"],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  for loss in ("clip", "siglip"):
    assert diffs[f"{loss}/moved"] > 1e-3
    for mode in ("shard_map", "pmap"):
      assert diffs[f"{loss}/{mode}/cached_vs_single"] < 1e-5, diffs
      assert diffs[f"{loss}/{mode}/uncached_vs_single"] < 1e-5, diffs
  # LoRA under sharded parameters: the merge after the gather trains as replicated parameters do, and
  # evaluators get merged kernels in their base kernels' layout.
  assert diffs["lora/sharded_vs_replicated"] < 1e-5 and diffs["lora/moved"] > 1e-3
  assert diffs["lora/sharded_embed_vs_host"] < 1e-5
