"""Run in a subprocess with 8 fake CPU devices: sharded parameters (FSDP) against a 1-device run.

A ViT tower (the registered `vit` encoder, `configs/retrieval/mmshapes_vit.py`'s tower) beside a Dense
MLP with BatchNorm, a classifier head, an EMA of the parameters: a few steps of SGD with momentum and of
Adam, written as the trainer's per-device step is, with `DataParallel`'s hooks. Then: the bytes each
device holds (from the arrays' `addressable_shards`), and a checkpoint saved sharded on 8 devices and
restored on 4 and on 1. Prints a table, then one JSON line of measurements.
"""

import functools
import json
import os
import tempfile
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax import lax

from configs.retrieval import mmshapes_vit
from mmlearn import parallel as parallel_lib
from mmlearn.models.encoders import ENCODERS
from mmlearn.runs import checkpoint
from mmlearn.train.prefetch import IteratorState

SHARD_MIN_SIZE = 1024
EMA_DECAY = 0.9
NUM_CLASSES = 10


@flax.struct.dataclass
class TrainState:  # The trainer's fields.
  step: jax.Array
  params: Any = None
  model_state: Any = None
  opt_state: Any = None
  ema_params: Any = None
  rng: jax.Array = None


class Net(nn.Module):
  """ViT tower + Dense/BatchNorm MLP on the same images, concatenated, then a linear head."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    tower = dict(mmshapes_vit.get_config().model.modalities.image)
    tower.pop("encoder")
    tower["depth"] = 1  # The config's tower, one block deep: half the compile time on fake CPU devices.
    vit = ENCODERS.get("vit")(**tower, name="vit")(x, train=train)
    h = nn.Dense(256, name="mlp_in")(x.reshape(x.shape[0], -1))
    h = nn.BatchNorm(use_running_average=not train, axis_name=parallel_lib.AXIS, name="bn")(h)
    h = nn.Dense(128, name="mlp_out")(nn.relu(h))
    return nn.Dense(NUM_CLASSES, name="head")(jnp.concatenate([vit, nn.relu(h)], axis=-1))


def loss_fn(params, model_state, batch, model):
  logits, new_model_state = model.apply(
    {"params": params, **model_state}, batch["image"], train=True, mutable=list(model_state)
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, new_model_state


def train_step(state, batch, *, model, tx, par):
  """The trainer's per-device step, with the parallel hooks (gather, reduce-scatter, sharded norms)."""
  params = par.gather_params(state.params)
  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params, state.model_state, batch, model
  )
  grads = par.reduce_gradients(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: EMA_DECAY * e + (1 - EMA_DECAY) * p, state.ema_params, new_params)
  metrics = {
    "loss": lax.pmean(loss, parallel_lib.AXIS),
    "grad_norm": par.global_norm(grads),
    "param_norm": par.global_norm(new_params),
  }
  state = state.replace(
    step=state.step + 1, params=new_params, model_state=model_state, opt_state=opt_state, ema_params=ema
  )
  return state, metrics


def eval_step(variables, batch, *, model, par):
  """An evaluator's per-device step: summed loss and correct count over all devices."""
  variables = {**variables, "params": par.gather_params(variables["params"])}
  logits = model.apply(variables, batch["image"], train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (logits.argmax(-1) == batch["label"]).sum()
  return lax.psum({"loss": losses.sum(), "correct": correct}, parallel_lib.AXIS)


def initial_state(variables, tx) -> TrainState:
  variables = dict(variables)
  params = variables.pop("params")
  state = TrainState(
    step=jnp.int32(0),
    params=params,
    model_state=variables,
    opt_state=tx.init(params),
    ema_params=params,
    rng=jax.random.PRNGKey(1),
  )
  return jax.device_get(state)


def train(par, evaluate, model, tx, host_state, batches):
  """(final state on the devices, per-step metrics on the host, eval sums with params and with the EMA)."""
  step = par.map(
    functools.partial(train_step, model=model, tx=tx, par=par), sharded_args=(1,), out_layouts=(0, None)
  )
  state = par.place_state(host_state)
  history = []
  for batch in batches:
    state, metrics = step(state, par.shard(batch))
    history.append(jax.device_get(metrics))
  evals = {
    name: jax.device_get(evaluate({"params": params, **state.model_state}, par.shard(batches[0])))
    for name, params in (("params", state.params), ("ema", state.ema_params))
  }
  return state, history, evals


def max_diff(a, b) -> float:
  """Largest difference between two trees' leaves: absolute, relative for leaves with values above 1."""
  diffs = []
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    diffs.append(float(np.abs(x - y).max() / max(1.0, np.abs(y).max())))
  return max(diffs)


def device_bytes(tree) -> dict[str, int]:
  """Bytes each device holds of a placed tree, from every leaf's `addressable_shards`."""
  held: dict[str, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[str(shard.device)] = held.get(str(shard.device), 0) + shard.data.nbytes
  return held


def bytes_table(host_state, replicated, sharded) -> dict[str, dict[str, int]]:
  """Per field: total bytes, and the most any device holds replicated and sharded."""
  rows = {}
  for field in ("params", "opt_state", "ema_params", "model_state", "step", "rng"):
    total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(getattr(host_state, field)))
    rows[field] = {
      "total": total,
      "replicated": max(device_bytes(getattr(replicated, field)).values(), default=0),
      "sharded": max(device_bytes(getattr(sharded, field)).values(), default=0),
    }
  rows["all"] = {k: sum(r[k] for r in rows.values()) for k in ("total", "replicated", "sharded")}
  return rows


def split_exactly(tree, num_devices: int) -> bool:
  """Every split leaf: one shard on each device, each exactly 1/N of the leaf's bytes."""
  split = [x for x in jax.tree.leaves(tree) if not x.is_fully_replicated]
  return bool(split) and all(
    len({s.device for s in x.addressable_shards}) == num_devices
    and all(s.data.nbytes * num_devices == x.nbytes for s in x.addressable_shards)
    for x in split
  )


def check_checkpoint(host_state, state8) -> dict[str, object]:
  """Saves the 8-device sharded state; checks nothing was gathered and the files are per shard; restores
  on 4 devices and on 1 (sharded templates) and into a host template."""
  saved = jax.device_get(state8)  # The reference values (the test's own gather, before the spies).
  given, gathered = [], []
  standard_save, device_get = ocp.args.StandardSave, jax.device_get

  def spy_save(item, *args, **kwargs):
    given.extend(jax.tree.leaves(item))
    return standard_save(item, *args, **kwargs)

  def spy_get(tree):
    gathered.extend(
      x.shape for x in jax.tree.leaves(tree) if isinstance(x, jax.Array) and not x.is_fully_replicated
    )
    return device_get(tree)

  workdir = tempfile.mkdtemp()
  ocp.args.StandardSave, jax.device_get = spy_save, spy_get
  try:
    checkpointer = checkpoint.Checkpointer(workdir, keep=2)
    checkpointer.save(3, state8, IteratorState({"next_index": 3}))
    checkpointer.close()
  finally:
    ocp.args.StandardSave, jax.device_get = standard_save, device_get
  sharded_leaves = [x for x in jax.tree.leaves(state8) if not x.is_fully_replicated]
  given_sharded = [x for x in given if isinstance(x, jax.Array) and not x.is_fully_replicated]

  # orbax records each array's sharding and writes one chunk per distinct shard.
  state_dir = os.path.join(workdir, "checkpoints", "3", "state")
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))
  tree = getattr(metadata, "tree", metadata)
  kernel = tree["params"]["mlp_in"]["kernel"]
  chunk = tuple(kernel.storage.chunk_shape) if getattr(kernel, "storage", None) else None
  placed_kernel = state8.params["mlp_in"]["kernel"]

  results = {}
  for count in (4, 1):
    par = parallel_lib.DataParallel(devices=jax.devices()[:count], shard_min_size=SHARD_MIN_SIZE)
    template = par.place_state(host_state)
    checkpointer = checkpoint.Checkpointer(workdir, keep=2, read_only=True)
    step, restored = checkpointer.restore_latest(template)
    checkpointer.close()
    layouts = all(
      r.sharding == t.sharding
      for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(template), strict=True)
    )
    results[f"8_to_{count}"] = {"step": step, "max_diff": max_diff(restored, saved), "layout_kept": layouts}
  checkpointer = checkpoint.Checkpointer(workdir, keep=2, read_only=True)
  host = checkpointer.restore(3, host_state)  # A tool's host template: host arrays back.
  checkpointer.close()
  results["8_to_host"] = {
    "max_diff": max_diff(host, saved),
    "host_arrays": all(isinstance(x, np.ndarray | np.generic) for x in jax.tree.leaves(host)),
  }
  return {
    "sharded_leaves": len(sharded_leaves),
    "given_to_orbax_sharded": len(given_sharded),
    "all_given_are_device_arrays": all(isinstance(x, jax.Array) for x in given),
    "gathered_during_save": [list(s) for s in gathered],
    "chunk_shape": list(chunk) if chunk else None,
    "shard_shape": list(placed_kernel.addressable_shards[0].data.shape),
    "full_shape": list(placed_kernel.shape),
    "restores": results,
  }


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
      "label": rng.integers(NUM_CLASSES, size=16).astype(np.int32),
    }
    for _ in range(3)
  ]
  model = Net()
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), batches[0]["image"])
  single = parallel_lib.DataParallel(devices=jax.devices()[:1])
  par8 = parallel_lib.DataParallel(shard_min_size=SHARD_MIN_SIZE)
  evaluators = {
    par: par.map(functools.partial(eval_step, model=model, par=par), sharded_args=(1,))
    for par in (single, par8)
  }
  # Adam's first update is lr * g / (|g| + eps): with the default eps=1e-8, elements whose true gradient
  # is 0 (attention key biases: softmax ignores them) step by +-lr on the sign of rounding noise, which
  # differs between any two summation orders (1 vs 8 devices). eps=1e-5 keeps the comparison meaningful.
  optimizers = {"sgd_momentum": optax.sgd(0.1, momentum=0.9), "adam": optax.adam(3e-3, eps=1e-5)}
  out: dict[str, object] = {}
  for name, tx in optimizers.items():
    host_state = initial_state(variables, tx)
    ref_state, ref_history, ref_eval = train(single, evaluators[single], model, tx, host_state, batches)
    state8, history8, eval8 = train(par8, evaluators[par8], model, tx, host_state, batches)
    out[name] = {
      "params": max_diff(state8.params, ref_state.params),
      "opt_state": max_diff(state8.opt_state, ref_state.opt_state),
      "ema_params": max_diff(state8.ema_params, ref_state.ema_params),
      "model_state": max_diff(state8.model_state, ref_state.model_state),
      "metrics": max_diff(history8, ref_history),
      "eval": max_diff(eval8, ref_eval),
      "moved": max_diff(ref_state.params, host_state.params),
      "step": int(state8.step),
    }
    if name == "adam":
      replicated = parallel_lib.DataParallel().place_state(host_state)
      out["bytes"] = bytes_table(host_state, replicated, state8)
      out["split_exactly"] = split_exactly(state8, 8)
      out["checkpoint"] = check_checkpoint(host_state, state8)

  print(f"bytes per device, 8 devices, adam, shard_min_size={SHARD_MIN_SIZE}:")
  print(f"{'':12} {'total':>10} {'replicated':>11} {'sharded':>10}")
  for field, row in out["bytes"].items():
    print(f"{field:12} {row['total']:>10,} {row['replicated']:>11,} {row['sharded']:>10,}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
