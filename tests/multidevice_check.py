"""Run in a subprocess with 4 fake CPU devices: 3 train steps on one global batch sequence, three ways.

Prints one JSON line with the largest parameter difference of `shard_map` and `pmap` (4 devices each)
from a single-device run, and between the two modes.
"""

import functools
import json
import sys

import jax
import numpy as np

from configs import tiny
from mmlearn import data, optim, train
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.tasks import TASKS


def run(par, task, tx, batches, params):
  state = train.TrainState(
    step=np.int32(0), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(1)
  )
  step = par.map(functools.partial(train.train_step, task=task, tx=tx), sharded_args=(1,))
  state = par.replicate(state)
  for batch in batches:
    state, _ = step(state, par.shard(batch))
  return jax.device_get(state.params)


def max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(data_dir):
  assert jax.device_count() == 4, jax.devices()
  config = tiny.get_config()
  config.optimizer.warmup_steps = 0
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=data_dir, splits=("train",))
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  it = pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16)
  batches = [next(it) for _ in range(3)]
  tx = optim.make_optimizer(config.optimizer, 10)
  params = task.init(jax.random.PRNGKey(0), batches[0])
  single = run(parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1]), task, tx, batches, params)
  sharded = run(parallel_lib.DataParallel("shard_map"), task, tx, batches, params)
  pmapped = run(parallel_lib.DataParallel("pmap"), task, tx, batches, params)
  print(
    json.dumps(
      {
        "shard_map_vs_single": max_diff(sharded, single),
        "pmap_vs_single": max_diff(pmapped, single),
        "shard_map_vs_pmap": max_diff(sharded, pmapped),
        "moved": max_diff(single, params),
      }
    )
  )


if __name__ == "__main__":
  main(sys.argv[1])
