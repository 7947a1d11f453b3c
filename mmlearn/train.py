"""The one training loop every task plugs into: `train_and_evaluate(config, workdir)`.

`train_step` is per-device code (it sees its slice of the global batch and averages with `pmean`);
`DataParallel` maps it over all devices with `shard_map` or `pmap`. The loop locks the workdir, checks
that a resume keeps the saved config, restores (and verifies) the latest checkpoint if there is one,
trains, logs, guards against a non-finite loss, gradient or parameter norm before every checkpoint,
checkpoints the state together with the data iterator, and evaluates every configured split at the end
(and, with `config.eval_every_steps` > 0, every that many steps: e.g. to follow a generative model's
sample grids).

Tasks follow `mmlearn.tasks.contract.Task`: the loss is `loss(params, batch, rng, step=step)`, with one
random key per example.
"""

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax

from mmlearn import config_checks, data, imputation, optim, rngs
from mmlearn import parallel as parallel_lib
from mmlearn import workdir as workdir_lib
from mmlearn.checkpoint import Checkpointer
from mmlearn.data import missing, pipeline
from mmlearn.data.augment import Augment
from mmlearn.errors import DivergedError
from mmlearn.metric_writer import MetricWriter
from mmlearn.prefetch import DevicePrefetch
from mmlearn.profiler import StepProfiler

# Re-exported: the trainer's public names include the run builders it uses.
from mmlearn.run_setup import (  # noqa: F401
  TrainState,
  build_task,
  check_batch_size,
  initial_state,
  total_train_steps,
)
from mmlearn.tasks.contract import Task


def train_step(state: TrainState, batch: dict[str, Any], *, task: Task, tx: optax.GradientTransformation):
  """Per-device step: local gradient, `pmean` over devices, optax update. Returns (state, metrics)."""
  local_size = jax.tree.leaves(batch)[0].shape[0]
  rng = rngs.example_keys(jax.random.fold_in(state.rng, state.step), local_size)
  grad_fn = jax.value_and_grad(functools.partial(task.loss, step=state.step), has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch, rng)
  grads = lax.pmean(grads, parallel_lib.AXIS)
  metrics = lax.pmean(metrics, parallel_lib.AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics |= {"grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


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
  workdir is locked for the whole run (see `mmlearn.workdir`). `allow_config_changes` lets a resume
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
  par = parallel_lib.DataParallel(config.parallel.mode)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size)
  splits = ("train", *config.dataset.eval_splits)
  with parallel_lib.process_zero_first("prepare dataset"):  # Processes sharing a data_dir don't race.
    sources, info = data.load_sources(
      config.dataset.name,
      config=config.dataset.config,
      data_dir=config.dataset.data_dir,
      manual_dir=config.dataset.manual_dir,
      splits=splits,
    )
  task, num_examples = build_task(config, sources["train"], info)
  check_batch_size(config, num_examples)
  num_steps = total_train_steps(config, num_examples)
  tx = optim.make_optimizer(config.optimizer, num_steps)
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
  num_parameters = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("parameters: %s", f"{num_parameters:,}")

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
  state = par.replicate(state)
  if jax.process_index() == 0:  # Only now: the config describes the parameters the checkpoints hold.
    workdir_lib.write_config(workdir, config)

  evaluators = [
    task.evaluator(
      par,
      sources[split],
      split=split,
      batch_size=config.eval_batch_size,
      max_tokens=config.dataset.max_tokens,
      transform=absent.evaluate(),
    )
    for split in config.dataset.eval_splits
  ]
  writer = MetricWriter(workdir, start_step=last_saved or 0, resumed=last_saved is not None)
  p_train_step = par.map(
    functools.partial(train_step, task=task, tx=tx), sharded_args=(1,), donate_argnums=(0,)
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
      if config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and step < num_steps:
        log_evaluation(writer, step, evaluate(evaluators, state.params))  # The final one follows the loop.
  finally:
    profiler.stop()
    checkpointer.close()

  results = {"model/num_parameters": num_parameters, **evaluate(evaluators, state.params)}
  log_evaluation(writer, step, results)
  writer.close()
  if jax.process_index() == 0:
    print(summary_line(results, task, config.dataset.eval_splits, step), flush=True)
  return results


def summary_line(results: dict[str, Any], task: Task, splits: Sequence[str], step: int) -> str:
  """`test accuracy 99.98% (validation 99.95%) at step 640`: the task's headline metric, last split first."""
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


def evaluate(evaluators: Sequence[Any], params: Any) -> dict[str, Any]:
  """Every evaluator's `(name, value)` pairs, one dict."""
  results = {}
  for evaluator in evaluators:
    results.update(evaluator.run(params))
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
