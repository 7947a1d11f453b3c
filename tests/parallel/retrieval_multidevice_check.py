"""Run in a subprocess with 4 fake CPU devices: contrastive losses over the global batch, three ways.

For each loss (clip, siglip), one `train_step` with plain SGD at learning rate 1 (so the parameter
change IS the averaged gradient) on one global batch of 32 pairs: on 1 device, on 4 with `shard_map`, on
4 with `pmap`. Also embeds a whole split with the retrieval evaluator on 4 devices (with a padded last
batch) and on 1. Prints one JSON line of the largest differences.
"""

import functools
import json
import sys

import jax
import numpy as np
import optax
from jax import lax

from configs.retrieval import tiny
from mmlearn import data
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.evaluators import retrieval
from mmlearn.losses import contrastive as losses
from mmlearn.tasks import TASKS
from mmlearn.train.state import TrainState
from mmlearn.train.step import train_step


def one_step(par, task, batch, variables):
  """(loss, gradient) of one mapped train step with SGD(1): the gradient is params - new params."""
  tx = optax.sgd(1.0)
  state = TrainState.create(variables, tx, jax.random.PRNGKey(1))
  step = par.map(
    functools.partial(train_step, task=task, tx=tx, par=par), sharded_args=(1,), out_layouts=(0, None)
  )
  state, metrics = step(par.place_state(state), par.shard(batch))
  new_variables = jax.device_get(state.variables())
  grads = jax.tree.map(lambda old, new: np.asarray(old) - np.asarray(new), variables, new_variables)
  return float(metrics["loss"]), grads


def max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(data_dir):
  assert jax.device_count() == 4, jax.devices()
  # The classification `tiny` build has the same image/caption inputs; gradients do not need `retrieval`.
  sources, info = data.load_sources("mmshapes", config="tiny", data_dir=data_dir, splits=("train", "test"))
  batch = next(pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16))
  single_device = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])
  out = {}
  for loss in ("clip", "siglip"):
    config = tiny.get_config(loss)
    task = TASKS.get("retrieval")(config, info=info, vocab_size=data.vocab_size("mmshapes"))
    params = task.init(jax.random.PRNGKey(0), batch)
    loss_1, grads_1 = one_step(single_device, task, batch, params)
    for mode in ("shard_map", "pmap"):
      loss_4, grads_4 = one_step(parallel_lib.DataParallel(mode), task, batch, params)
      out[f"{loss}/{mode}/loss"] = abs(loss_4 - loss_1)
      out[f"{loss}/{mode}/grads"] = max_diff(grads_4, grads_1)
    out[f"{loss}/grad_scale"] = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_1))
    out[f"{loss}/loss"] = loss_1

  # The check has teeth: without the gradient through the gathered embeddings the loss is the same but
  # the gradient misses what the other devices' rows contribute.
  gather = losses.gather
  losses.gather = lambda x, axis_name: (lax.stop_gradient(gather(x, axis_name)[0]), gather(x, axis_name)[1])
  try:
    _, grads_cut = one_step(parallel_lib.DataParallel("shard_map"), task, batch, params)
  finally:
    losses.gather = gather
  out["siglip/stop_gradient_gather/grads"] = max_diff(grads_cut, grads_1)

  # 256 test examples in batches of 24: the last one holds 16 real examples and 8 of padding.
  def embed(par):
    evaluator = retrieval.for_task(task, par, sources["test"], split="test", batch_size=24, max_tokens=16)
    return evaluator.embed_split(params)

  direct = task.embed(params, next(pipeline.eval_batches(sources["test"], batch_size=256, max_tokens=16)))
  for name, par in (
    ("single", single_device),
    ("shard_map", parallel_lib.DataParallel("shard_map")),
    ("pmap", parallel_lib.DataParallel("pmap")),
  ):
    out[f"embed/{name}_vs_direct"] = max_diff(embed(par), {m: direct[m] for m in task.modalities})
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
