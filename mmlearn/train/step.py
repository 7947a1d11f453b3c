"""The per-device train step, gradient accumulation inside it, and the guard against non-finite values.

`train_step` is per-device code (it sees its slice of the global batch and averages with `pmean`);
`mmlearn.parallel.DataParallel` maps it over all devices with `shard_map` or `pmap`. A task's loss is
`loss(variables, batch, rng, step=step, dropout_rng=key)`, with one random key per example for the
task's own noise and one per device for dropout (`mmlearn.rngs`).
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn import rngs
from mmlearn.errors import ConfigError, DivergedError
from mmlearn.tasks.contract import Batch, ChunkedContrastive, PyTree, Task
from mmlearn.train import grad_cache, lora
from mmlearn.train.state import TrainState


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  task: Task,
  tx: optax.GradientTransformation,
  par: parallel_lib.DataParallel,
  ema_decay: float = 0.0,
  microbatch_size: int = 0,
):
  """Per-device step: local gradient, averaged over devices, optax update, EMA. Returns (state, metrics).

  The layout of the parameters is `par`'s business (replicated, or sharded and gathered for the
  forward); the step sees full parameters. Mutable collections (BatchNorm statistics) come back from
  the loss already averaged over devices (the layers reduce over the mapped axis). With
  `microbatch_size` > 0 the device's gradient is accumulated over chunks of that many examples
  (`accumulated_gradient`), or, for a contrastive loss, cached (`mmlearn.train.grad_cache`). With LoRA's
  adapters in the parameters the task sees them merged (`lora.merged`), and the gradient reaches the
  adapters through the merge.
  """
  local_size = jax.tree.leaves(batch)[0].shape[0]
  step_key = jax.random.fold_in(state.rng, state.step)
  example_rng = rngs.example_keys(step_key, local_size)
  dropout_rng = rngs.device_key(rngs.stream_key(step_key, "dropout"))

  def variables_of(params):
    return {"params": lora.merged(params), **state.model_state}

  def objective(params, batch, example_rng, dropout_rng):
    loss, metrics, updated = task.loss(
      variables_of(params), batch, example_rng, step=state.step, dropout_rng=dropout_rng
    )
    return loss, (metrics, updated)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  params = par.gather_params(state.params)
  num_chunks = microbatch_chunks(microbatch_size, local_size, task, state.model_state)
  if num_chunks == 1:
    (_, (metrics, updated)), grads = grad_fn(params, batch, example_rng, dropout_rng)
  elif isinstance(task, ChunkedContrastive) and not task.separable_loss:
    metrics, grads = grad_cache.cached_gradient(task, variables_of, params, batch, dropout_rng, num_chunks)
    updated = {}
  else:
    metrics, grads = accumulated_gradient(grad_fn, params, (batch, example_rng), dropout_rng, num_chunks)
    updated = {}
  grads = par.reduce_gradients(grads)
  metrics = lax.pmean(metrics, parallel_lib.AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
  metrics |= {"grad_norm": par.global_norm(grads), "param_norm": par.global_norm(params)}
  state = state.replace(
    step=state.step + 1,
    params=params,
    model_state={**state.model_state, **updated},
    opt_state=opt_state,
    ema_params=ema,
  )
  return state, metrics


def microbatch_chunks(
  microbatch_size: int, local_size: int, task: Task, model_state: dict[str, PyTree]
) -> int:
  """How many chunks a device's batch is split into (1: none); `ConfigError` where chunks change the loss."""
  if microbatch_size <= 0 or microbatch_size >= local_size:
    return 1
  if local_size % microbatch_size:
    raise ConfigError(
      f"microbatch_size {microbatch_size} does not divide the per-device batch of {local_size} examples"
    )
  if not task.separable_loss and not isinstance(task, ChunkedContrastive):
    raise ConfigError(
      f"microbatch_size {microbatch_size}: task {type(task).__name__}'s loss couples the examples of a batch "
      "(e.g. in-batch negatives), so chunks would train a different loss; set microbatch_size=0"
    )
  if model_state:
    raise ConfigError(
      f"microbatch_size {microbatch_size}: the model keeps batch statistics ({', '.join(model_state)}), "
      "which chunks would compute over fewer examples; set microbatch_size=0"
    )
  return local_size // microbatch_size


def accumulated_gradient(
  grad_fn: Callable, params: PyTree, per_example: PyTree, dropout_rng: jax.Array | None, num_chunks: int
) -> tuple[dict[str, jax.Array], PyTree]:
  """(metrics, gradient) of a batch as the mean over `num_chunks` equal chunks, one chunk at a time.

  For a loss that is a mean of per-example terms (`Task.separable_loss`) this is the whole batch's
  gradient up to rounding: each example keeps its own random key, and only dropout draws a key per
  chunk. Why: a chunk's activations are `num_chunks` times smaller, which bounds memory, and on CPU keeps
  them in cache (a large dense layer's input at batch 256 does not fit). The first chunk is computed
  outside the scan so the accumulator has the gradient's own type (under `shard_map` it varies per device).
  """
  chunked = jax.tree.map(lambda x: x.reshape(num_chunks, x.shape[0] // num_chunks, *x.shape[1:]), per_example)

  def chunk_gradient(index, chunk):
    key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    (_, (metrics, _)), grads = grad_fn(params, *chunk, key)
    return metrics, grads

  def add(total, xs):
    return jax.tree.map(lax.add, total, chunk_gradient(*xs)), None

  first = chunk_gradient(0, jax.tree.map(lambda x: x[0], chunked))
  rest = jax.tree.map(lambda x: x[1:], chunked)
  total, _ = lax.scan(add, first, (jnp.arange(1, num_chunks), rest))
  return jax.tree.map(lambda x: x / num_chunks, total)


GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


def check_finite(history: Sequence[tuple[int, dict[str, float]]], last_good: int | None) -> None:
  """Raises `DivergedError` naming the first step whose loss, gradient norm or parameter norm is not finite.

  Checked before every checkpoint is saved, so every checkpoint on disk passed it: a diverged state
  (a finite loss but infinite parameters, say) is never saved, and so never rotates a sane one out.
  """
  for step, metrics in history:
    for name in GUARDED_METRICS:
      value = float(metrics[name])
      if not math.isfinite(value):
        good = "none saved" if last_good is None else f"step {last_good}"
        raise DivergedError(
          f"non-finite {name} ({value}) at step {step}; training stopped, last good checkpoint: {good}"
        )
