"""One of N processes of a multi-process run: 3 train steps on one global batch sequence, both modes.

Usage: `multihost_check.py DATA_DIR COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID` (CPU devices per
process from `XLA_FLAGS`). Every process builds the same global batches and feeds only its own rows;
after training under `shard_map` and `pmap` over all devices of all processes, it prints one JSON line:
the largest parameter difference between the modes and a checksum of its own replica; process 0 also
trains the same global batches on one of its devices alone (a single-process run) and compares.
"""

import json
import sys

import jax
import numpy as np

from configs import tiny
from conftest import max_diff, run_steps
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.tasks import TASKS

GLOBAL_BATCH = 32


def main(data_dir, coordinator_address, num_processes, process_id):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # JAX's default on CPU; named to be sure.
  parallel_lib.initialize_distributed(coordinator_address, int(num_processes), int(process_id))
  config = tiny.get_config()
  config.optimizer.warmup_steps = 0
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=data_dir, splits=("train",))
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  # The single-process pipeline's batches, identical on every process; each feeds its own rows.
  it = pipeline.train_iterator(
    sources["train"], batch_size=GLOBAL_BATCH, seed=0, max_tokens=16, process_index=0, process_count=1
  )
  global_batches = [next(it) for _ in range(3)]
  rows = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  local_batches = [jax.tree.map(lambda x: x[mine], batch) for batch in global_batches]
  tx = optim.make_optimizer(config.optimizer, 10)
  params = task.init(jax.random.PRNGKey(0), global_batches[0])
  results = {
    mode: run_steps(parallel_lib.DataParallel(mode), task, tx, params, local_batches)[0]
    for mode in ("shard_map", "pmap")
  }
  report = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "shard_map_vs_pmap": max_diff(results["shard_map"], results["pmap"]),
    "checksum": sum(float(np.abs(x).sum()) for x in jax.tree.leaves(results["shard_map"])),
  }
  if jax.process_index() == 0:  # Only one process pays for the reference run (the CPU has 2 cores).
    single_device = parallel_lib.DataParallel(devices=jax.local_devices()[:1])
    single = run_steps(single_device, task, tx, params, global_batches)[0]
    report["shard_map_vs_single"] = max_diff(results["shard_map"], single)
    report["pmap_vs_single"] = max_diff(results["pmap"], single)
    report["moved"] = max_diff(single, params)
  print(json.dumps(report))


if __name__ == "__main__":
  main(*sys.argv[1:])
