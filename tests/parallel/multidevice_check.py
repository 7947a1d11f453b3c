"""Run in a subprocess with 4 fake CPU devices: 3 train steps on one global batch sequence, three ways.

Prints one JSON line with the largest difference of the variables (parameters and, for the BatchNorm
model, its running statistics) of `shard_map` and `pmap` (4 devices each) from a single-device run,
and between the two modes; keys with a `bn_` prefix are the same for the CNN with BatchNorm, whose
statistics must be the global batch's on every device.
"""

import json
import sys

import jax

from configs import tiny
from conftest import max_diff, run_steps
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.tasks import TASKS


def main(data_dir):
  assert jax.device_count() == 4, jax.devices()
  diffs = compare(data_dir, batch_norm=False)
  diffs |= {f"bn_{k}": v for k, v in compare(data_dir, batch_norm=True).items()}
  print(json.dumps(diffs))


def compare(data_dir, *, batch_norm):
  config = tiny.get_config()
  config.optimizer.warmup_steps = 0
  config.model.modalities.image.batch_norm = batch_norm
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=data_dir, splits=("train",))
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  it = pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16)
  batches = [next(it) for _ in range(3)]
  tx = optim.make_optimizer(config.optimizer, 10)
  params = task.init(jax.random.PRNGKey(0), batches[0])
  single_device = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])
  single = run_steps(single_device, task, tx, params, batches)[0]
  sharded = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, params, batches)[0]
  pmapped = run_steps(parallel_lib.DataParallel("pmap"), task, tx, params, batches)[0]
  diffs = {
    "shard_map_vs_single": max_diff(sharded, single),
    "pmap_vs_single": max_diff(pmapped, single),
    "shard_map_vs_pmap": max_diff(sharded, pmapped),
    "moved": max_diff(single, params),
  }
  if batch_norm:
    diffs["stats_moved"] = max_diff(single["batch_stats"], params["batch_stats"])
  return diffs


if __name__ == "__main__":
  main(sys.argv[1])
