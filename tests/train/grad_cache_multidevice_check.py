"""Run in a subprocess with 4 fake CPU devices: cached contrastive gradients, and LoRA over sharded params.

For each loss (clip, siglip), two SGD steps on a global batch of 32 synthetic pairs: on 1 device without
chunks, and on 4 devices (shard_map, pmap) with and without `microbatch_size=2` (4 chunks of each
device's 8 pairs, the loss over all 32). Then LoRA adapters trained with parameters sharded
(`shard_min_size`) and replicated, and the sharded run's merged evaluation variables embedded through
`par.gather_params` as evaluators do. Prints one JSON line of the largest differences.
"""

import json

import jax
import numpy as np
import optax
from jax import lax
from test_grad_cache import VOCAB, synthetic_batch

from configs.retrieval import tiny
from conftest import max_diff, run_steps
from mmlearn import optim
from mmlearn import parallel as parallel_lib
from mmlearn.tasks import TASKS
from mmlearn.train import lora
from mmlearn.train.state import TrainState


def main():
  assert jax.device_count() == 4, jax.devices()
  batches = [synthetic_batch(32, seed) for seed in range(2)]
  single = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])
  out = {}
  for loss in ("clip", "siglip"):
    task = TASKS.get("retrieval")(tiny.get_config(loss), vocab_size=VOCAB)
    variables = task.init(jax.random.PRNGKey(0), batches[0])
    tx = optax.sgd(0.5)
    reference, _ = run_steps(single, task, tx, variables, batches)
    out[f"{loss}/moved"] = max_diff(reference, variables)
    for mode in ("shard_map", "pmap"):
      par = parallel_lib.DataParallel(mode)
      cached, _ = run_steps(par, task, tx, variables, batches, microbatch_size=2)
      uncached, _ = run_steps(par, task, tx, variables, batches)
      out[f"{loss}/{mode}/cached_vs_single"] = max_diff(cached, reference)
      out[f"{loss}/{mode}/uncached_vs_single"] = max_diff(uncached, reference)

  config = tiny.get_config("clip")
  config.lora.update(rank=4, targets="projection|encoder/dense")
  config.optimizer.warmup_steps = 0
  task = TASKS.get("retrieval")(config, vocab_size=VOCAB)
  rng = jax.random.PRNGKey(0)
  variables = lora.with_adapters(task.init(rng, batches[0]), config, lora.adapter_rng(rng))
  tx = optim.make_optimizer(config.optimizer, 10, train_only=lora.trained(config))
  replicated, _ = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, variables, batches)
  sharded_par = parallel_lib.DataParallel("shard_map", shard_min_size=256)
  sharded, _ = run_steps(sharded_par, task, tx, variables, batches)
  out["lora/sharded_vs_replicated"] = max_diff(sharded, replicated)
  out["lora/moved"] = max_diff(sharded["params"]["lora"], variables["params"]["lora"])

  placed = sharded_par.place_state(TrainState.create(sharded, tx, rng))
  merged = lora.evaluation_merger(sharded_par)(placed.variables())
  kernel = merged["params"]["image_encoder"]["dense"]["kernel"]  # [256, 32]: split over the devices.
  assert kernel.addressable_shards[0].data.shape != kernel.shape, kernel.sharding

  def embed(variables, batch):
    full = {**variables, "params": sharded_par.gather_params(variables["params"])}
    return lax.all_gather(task.embed(full, batch), parallel_lib.AXIS, tiled=True)

  mapped = sharded_par.map(embed, sharded_args=(1,))
  on_devices = jax.device_get(mapped(merged, sharded_par.shard(batches[0])))
  on_host = task.embed(lora.merged_variables(sharded), batches[0])
  out["lora/sharded_embed_vs_host"] = max_diff(on_devices, on_host)
  print(json.dumps({k: float(np.asarray(v)) for k, v in out.items()}))


if __name__ == "__main__":
  main()
