"""Run in a subprocess with 4 fake CPU devices: the MVAE (a stochastic task) on 1 and 4 devices.

10 train steps of the tiny MVAE (`configs/mvae/tiny.py`) on the same global batches of 32, on 1 device and
on 4 (`shard_map`; `pmap` with `--pmap`), then the evaluator's per-device step (its summed ELBO terms) on
one test batch on 1 and 4 devices. Randomness is keyed by each example's index in the global batch
(`mmlearn.rngs.example_keys`), so the runs agree to float tolerance. With `--control`, also the same
training with the old per-device streams (one key per device, `fold_in(key, device index)`), which must
disagree. Prints one JSON line of the largest differences.
"""

import functools
import json
import sys

import jax
import numpy as np
from jax import lax

from configs.mvae import tiny
from conftest import max_diff, run_steps
from mmlearn import data, optim, rngs
from mmlearn import parallel as parallel_lib
from mmlearn.data import mmshapes, pipeline
from mmlearn.evaluators import loss as loss_evaluator
from mmlearn.tasks import TASKS

STEPS = 10


def per_device_keys(key, local_size, axis=parallel_lib.AXIS):
  """The streams before per-example keys: one key per device, so a draw depends on the device count."""
  del local_size
  return jax.random.fold_in(key, lax.axis_index(axis))


def train(par, task, tx, params, batches):
  """(final parameters, per-step losses) of `STEPS` real train steps mapped by `par`."""
  new_params, losses = run_steps(par, task, tx, params, batches)
  return new_params, np.asarray(losses)


def compare(run_1, run_4) -> tuple[float, float]:
  """(largest parameter difference, largest relative difference of a step's loss) of two runs."""
  (params_1, losses_1), (params_4, losses_4) = run_1, run_4
  return max_diff(params_4, params_1), float(np.max(np.abs(losses_4 - losses_1) / np.abs(losses_1)))


def main(data_dir, flags):
  assert jax.device_count() == 4, jax.devices()
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  sources, info = data.load_sources(
    "mmshapes", config="retrieval_tiny", data_dir=data_dir, splits=("train", "test")
  )
  task = TASKS.get("mvae")(config, info=info, vocab_size=len(mmshapes.VOCABULARY))
  it = pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16)
  batches = [next(it) for _ in range(STEPS)]
  tx = optim.make_optimizer(config.optimizer, STEPS)
  params = task.init(jax.random.PRNGKey(0), batches[0])
  one = parallel_lib.DataParallel("shard_map", devices=jax.devices()[:1])
  modes = ("shard_map", "pmap") if "--pmap" in flags else ("shard_map",)

  single = train(one, task, tx, params, batches)
  out = {"moved": max_diff(single[0], params)}
  for mode in modes:
    out[f"{mode}/params"], out[f"{mode}/loss"] = compare(
      single, train(parallel_lib.DataParallel(mode), task, tx, params, batches)
    )

  # Evaluation: the summed ELBO terms of one test batch (z drawn from each example's key).
  batch = next(pipeline.eval_batches(sources["test"], batch_size=32, max_tokens=16))
  key = jax.random.PRNGKey(loss_evaluator.EVAL_SEED)

  def eval_sums(par):
    step = par.map(functools.partial(loss_evaluator.weighted_sums, task.example_losses), sharded_args=(1,))
    replicated = jax.device_put((single[0], key), par.replicated)
    return jax.device_get(step(replicated[0], par.shard(batch), replicated[1]))

  sums_1, sums_4 = eval_sums(one), eval_sums(parallel_lib.DataParallel("shard_map"))
  out["eval/elbo"] = float(sums_1["elbo"] / sums_1["count"])
  out["eval/sums"] = max(float(abs(sums_4[k] - v) / max(1.0, abs(v))) for k, v in sums_1.items())

  if "--control" in flags:  # The check has teeth: with one stream per device, 4 devices train otherwise.
    example_keys = rngs.example_keys
    rngs.example_keys = per_device_keys
    try:
      control_1 = train(one, task, tx, params, batches)
      control_4 = train(parallel_lib.DataParallel("shard_map"), task, tx, params, batches)
      out["per_device_keys/shard_map/params"], out["per_device_keys/shard_map/loss"] = compare(
        control_1, control_4
      )
      control_sums = eval_sums(one), eval_sums(parallel_lib.DataParallel("shard_map"))
      out["per_device_keys/eval/sums"] = max(  # The same parameters, evaluated with per-device keys.
        float(abs(control_sums[1][k] - v) / max(1.0, abs(v))) for k, v in control_sums[0].items()
      )
    finally:
      rngs.example_keys = example_keys
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
