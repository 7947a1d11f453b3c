"""The one training loop every task plugs into: `train_and_evaluate(config, workdir)`.

`train_step` is per-device code (it sees its slice of the global batch and averages with `pmean`);
`DataParallel` maps it over all devices with `shard_map` or `pmap`. The loop locks the workdir, checks
that a resume keeps the saved config, restores (and verifies) the latest checkpoint if there is one,
trains, logs, guards against a non-finite loss, gradient or parameter norm before every checkpoint,
checkpoints the state together with the data iterator, and runs the configured evaluators
(`mmlearn.evaluators.registry`: each on its schedule, all at the end). With `config.select_metric` it keeps the
best-validation state too (`mmlearn.runs.selection`) and reports the test metrics at that step beside the
last step's. With `config.ema_decay` > 0 evaluation uses the parameters' moving average.

Tasks follow `mmlearn.tasks.contract.Task`: the loss is `loss(variables, batch, rng, step=step,
dropout_rng=key)`, with one random key per example for the task's own noise and one per device for
dropout.
"""

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax

from mmlearn import data, optim, rngs
from mmlearn import parallel as parallel_lib
from mmlearn.config import checks as config_checks
from mmlearn.data import missing, pipeline
from mmlearn.data.augment import Augment
from mmlearn.errors import ConfigError, DivergedError
from mmlearn.evaluators import registry as evaluators_lib
from mmlearn.runs import imputation, init_from, selection
from mmlearn.runs import workdir as workdir_lib
from mmlearn.runs.checkpoint import Checkpointer
from mmlearn.runs.metric_writer import MetricWriter
from mmlearn.tasks.contract import Task
from mmlearn.train.prefetch import DevicePrefetch
from mmlearn.train.profiler import StepProfiler

# Re-exported: the trainer's public names include the run builders it uses.
from mmlearn.train.state import (  # noqa: F401
  TrainState,
  build_task,
  check_batch_size,
  initial_state,
  total_train_steps,
)


def train_step(
  state: TrainState,
  batch: dict[str, Any],
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
  (`accumulated_gradient`).
  """
  local_size = jax.tree.leaves(batch)[0].shape[0]
  step_key = jax.random.fold_in(state.rng, state.step)
  example_rng = rngs.example_keys(step_key, local_size)
  dropout_rng = rngs.device_key(rngs.stream_key(step_key, "dropout"))

  def objective(params, batch, example_rng, dropout_rng):
    variables = {"params": params, **state.model_state}
    loss, metrics, updated = task.loss(
      variables, batch, example_rng, step=state.step, dropout_rng=dropout_rng
    )
    return loss, (metrics, updated)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  params = par.gather_params(state.params)
  num_chunks = microbatch_chunks(microbatch_size, local_size, task, state.model_state)
  if num_chunks == 1:
    (_, (metrics, updated)), grads = grad_fn(params, batch, example_rng, dropout_rng)
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


def microbatch_chunks(microbatch_size: int, local_size: int, task: Task, model_state: dict[str, Any]) -> int:
  """How many chunks a device's batch is split into (1: none); `ConfigError` where chunks change the loss."""
  if microbatch_size <= 0 or microbatch_size >= local_size:
    return 1
  if local_size % microbatch_size:
    raise ConfigError(
      f"microbatch_size {microbatch_size} does not divide the per-device batch of {local_size} examples"
    )
  if not task.separable_loss:
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
  grad_fn: Callable, params: Any, per_example: Any, dropout_rng: jax.Array, num_chunks: int
) -> tuple[dict[str, Any], Any]:
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


def check_finite(history: Sequence[tuple[int, dict[str, Any]]], last_good: int | None) -> None:
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


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  hooks: Sequence[Callable] = (),
  allow_config_changes: bool = False,
  fallback: bool = False,
  profile_steps: tuple[int, int] | None = None,
):
  """Trains `config` in `workdir` (resuming if it holds checkpoints) and returns the final eval metrics.

  Everything is validated, and a resumed state restored, before anything is written to `workdir`; the
  workdir is locked for the whole run (see `mmlearn.runs.workdir`). `allow_config_changes` lets a resume
  change logging, evaluation and length keys; `fallback` resumes from the newest intact checkpoint when
  the latest is damaged. `hooks` are called as `hook(step, metrics)` after each log interval (e.g. to
  stop a run early). `profile_steps=(start, end)` traces those steps with `jax.profiler`.
  """
  config_checks.check(config)
  workdir_lib.prepare(workdir)
  with workdir_lib.exclusive(workdir, enabled=jax.process_index() == 0):
    changed = workdir_lib.check_resume(workdir, config, allow_changes=allow_config_changes)
    return _train_and_evaluate(
      config, workdir, hooks=hooks, changed=changed, fallback=fallback, profile_steps=profile_steps
    )


def _train_and_evaluate(config, workdir, *, hooks, changed, fallback, profile_steps):
  par = parallel_lib.DataParallel(config.parallel.mode, shard_min_size=config.parallel.shard_min_size)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size)
  splits = ("train", *evaluators_lib.configured_splits(config))
  with parallel_lib.process_zero_first("prepare dataset"):  # Processes sharing a data_dir don't race.
    sources, info = data.load_sources(
      config.dataset.name,
      config=config.dataset.config,
      data_dir=config.dataset.data_dir,
      manual_dir=config.dataset.manual_dir,
      options=config.dataset.options,
      splits=splits,
    )
  task, num_examples = build_task(config, sources["train"], info)
  eval_specs = evaluators_lib.specs(config, task)
  selection.check(config.select_metric, evaluators_lib.splits(eval_specs))
  check_batch_size(config, num_examples)
  num_steps = total_train_steps(config, num_examples)
  tx = optim.make_optimizer(config.optimizer, num_steps, norm=par.global_norm)
  absent = missing.from_config(config, sources["train"], load_generator=imputation.load_generator)
  train_iter = pipeline.train_iterator(
    sources["train"],
    batch_size=config.batch_size,
    seed=config.seed,
    max_tokens=config.dataset.max_tokens,
    imbalance_ratio=config.dataset.imbalance_ratio,
    imbalance_seed=config.dataset.imbalance_seed,
    sampler=config.dataset.sampler,
    transforms=(Augment.from_config(config.augment), absent),
  )
  state = initial_state(config, task, tx, sources["train"], par.num_devices)
  if config.init_from.workdir:  # Replaced by the checkpoint when the run resumes.
    variables = init_from.load(config.init_from, state.variables())
    state = TrainState.create(variables, tx, state.rng, ema=state.ema_params is not None)
  # Raises now rather than when the first step is traced.
  microbatch_chunks(config.microbatch_size, config.batch_size // par.num_devices, task, state.model_state)
  num_parameters = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("parameters: %s", f"{num_parameters:,}")
  state = par.place_state(state)

  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    last_saved, state = checkpointer.restore_latest(state, train_iter, fallback=fallback)
  except BaseException:
    checkpointer.close()
    raise
  if last_saved is not None:
    logging.info("resuming from the checkpoint at step %d", last_saved)
  if changed:
    logging.warning("resuming with changed config keys: %s", ", ".join(changed))
  if jax.process_index() == 0:  # Only now: the config describes the parameters the checkpoints hold.
    workdir_lib.write_config(workdir, config)

  context = evaluators_lib.RunContext(
    task=task,
    par=par,
    dataset=config.dataset.name,
    batch_size=config.eval_batch_size,
    max_tokens=config.dataset.max_tokens,
    absent=absent,
    seed=config.missing.seed,
  )
  evaluators = [(spec, evaluators_lib.build(spec, context, sources[spec.split])) for spec in eval_specs]
  use_ema = config.ema_decay > 0
  best = selection.BestCheckpoint(workdir, config.select_metric) if config.select_metric else None
  writer = MetricWriter(workdir, start_step=last_saved or 0, resumed=last_saved is not None)
  p_train_step = par.map(
    functools.partial(
      train_step,
      task=task,
      tx=tx,
      par=par,
      ema_decay=config.ema_decay,
      microbatch_size=config.microbatch_size,
    ),
    sharded_args=(1,),
    donate_argnums=(0,),
    out_layouts=(0, None),  # The new state keeps the state's layout (sharded or not); metrics replicated.
  )
  step = int(state.step)
  batches = DevicePrefetch(train_iter, par.shard)
  profiler = StepProfiler(workdir, profile_steps)
  history: list[tuple[int, Any]] = []
  timer = (time.perf_counter(), step)
  try:
    while step < num_steps:
      profiler.before_step(step + 1)
      state, metrics = p_train_step(state, next(batches))
      step += 1
      profiler.after_step(step, metrics)
      history.append((step, metrics))
      at_log = step % config.log_every_steps == 0 or step == num_steps
      at_checkpoint = step % config.checkpoint_every_steps == 0 or step == num_steps
      if at_log or at_checkpoint:
        history = jax.device_get(history)  # The only host sync: once per log or checkpoint interval.
        check_finite(history, last_saved)
      if at_log:
        timer = log_progress(writer, history, timer, step, num_steps, config.batch_size)
        for hook in hooks:
          hook(step, history[-1][1])
      if at_checkpoint:
        writer.flush()  # The logs of every step up to the checkpoint are on disk before it is.
        checkpointer.save(step, state, batches.consumed_state())
        last_saved = step
      if at_log or at_checkpoint:
        history = []
      due = [(spec, e) for spec, e in evaluators if spec.due(step)]
      if due and step < num_steps:  # The final evaluation, of every evaluator, follows the loop.
        results = evaluate(due, state.variables(ema=use_ema))
        log_evaluation(writer, step, results)
        if best is not None:
          best.update(step, results, state, batches.consumed_state(), write=jax.process_index() == 0)
    results = {"model/num_parameters": num_parameters, **evaluate(evaluators, state.variables(ema=use_ema))}
    log_evaluation(writer, step, results)
    if best is not None:
      best.update(step, results, state, batches.consumed_state(), write=jax.process_index() == 0)
      if best.step is None:
        reported = ", ".join(sorted(k for k in results if np.ndim(results[k]) == 0))
        raise ConfigError(f"select_metric {config.select_metric!r} was never reported; reported: {reported}")
      if best.step != step:
        at_best = evaluate(evaluators, best.restore(state).variables(ema=use_ema))
        results |= {f"best/{name}": value for name, value in at_best.items()}
      else:
        results |= {f"best/{k}": v for k, v in results.items() if "/" in k and not k.startswith("model/")}
      results["best/step"] = best.step
      writer.write(step, {k: v for k, v in results.items() if k.startswith("best/")})
  finally:
    profiler.stop()
    checkpointer.close()
    if best is not None:
      best.close()

  writer.close()
  if jax.process_index() == 0:
    print(summary_line(results, task, evaluators_lib.splits(eval_specs), step), flush=True)
  return results


def summary_line(results: dict[str, Any], task: Task, splits: Sequence[str], step: int) -> str:
  """`test accuracy 99.98% (validation 99.95%) at step 640`: the task's headline metric, last split first.

  With a selected best checkpoint elsewhere than the last step, the same at that step follows.
  """
  line = _headline(results, task, splits, step)
  best_step = results.get("best/step")
  if best_step is not None and best_step != step:
    at_best = {k.removeprefix("best/"): v for k, v in results.items() if k.startswith("best/")}
    line += f"; best on validation: {_headline(at_best, task, splits, best_step)}"
  return line


def _headline(results: dict[str, Any], task: Task, splits: Sequence[str], step: int) -> str:
  metric = getattr(task, "summary_metric", "loss")
  values = [
    (split, results[f"{split}/{metric}"]) for split in reversed(splits) if f"{split}/{metric}" in results
  ]
  if not values:
    return f"finished at step {step}"
  percent = metric.rsplit("/", 1)[-1] in ("accuracy", "R@1", "R@5", "R@10")

  def show(value: float) -> str:
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"

  (first, value), rest = values[0], values[1:]
  others = ", ".join(f"{split} {show(v)}" for split, v in rest)
  return f"{first} {metric} {show(value)}" + (f" ({others})" if others else "") + f" at step {step}"


def evaluate(evaluators: Sequence[tuple[Any, Any]], variables: dict[str, Any]) -> dict[str, Any]:
  """Every (spec, evaluator)'s `(name, value)` pairs, one dict."""
  results = {}
  for _, evaluator in evaluators:
    results.update(evaluator.run(variables))
  return results


def log_evaluation(writer: MetricWriter, step: int, results: dict[str, Any]) -> None:
  """Writes the evaluation results and logs their headline scalars."""
  writer.write(step, results)
  headline = {
    k: round(v, 4)
    for k, v in results.items()
    if np.ndim(v) == 0 and "class_recall" not in k and "model/" not in k
  }
  logging.info("step %d evaluation: %s", step, json.dumps(headline))


def log_progress(writer, history, timer, step, num_steps, batch_size):
  """Writes the interval's mean train metrics and logs a progress line; returns the new timer."""
  (start, start_step), now = timer, time.perf_counter()
  means = {f"train/{k}": float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
  writer.write(step, means)
  steps_per_s = (step - start_step) / max(now - start, 1e-9)
  eta = (num_steps - step) / max(steps_per_s, 1e-9)
  shown = "  ".join(f"{k.removeprefix('train/')} {v:.4g}" for k, v in means.items())
  logging.info(
    "step %d/%d  %s  %.1f steps/s  %.0f examples/s  ETA %s",
    step,
    num_steps,
    shown,
    steps_per_s,
    steps_per_s * batch_size,
    time.strftime("%H:%M:%S", time.gmtime(eta)),
  )
  return now, step
