"""The one training loop every task plugs into: `train_and_evaluate(config, workdir)`.

The run's parts are built first (`mmlearn.train.setup`: data, task, optimizer, state, evaluators), then
the loop locks the workdir, checks that a resume keeps the saved config, restores (and verifies) the
latest checkpoint if there is one, trains with the per-device `train_step` mapped over every device,
logs, guards against a non-finite loss, gradient or parameter norm before every checkpoint, checkpoints
the state together with the data iterator, and runs the configured evaluators (each on its schedule,
all at the end). With `config.select_metric` it keeps the best-validation state too and reports the
test metrics at that step beside the last step's. With `config.ema_decay` > 0 evaluation uses the
parameters' moving average.
"""

import functools
import json
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from mmlearn.config import checks
from mmlearn.runs import selection
from mmlearn.runs import workdir as workdir_lib
from mmlearn.runs.checkpoint import Checkpointer
from mmlearn.runs.metric_writer import MetricWriter
from mmlearn.tasks.contract import Metric
from mmlearn.train import setup
from mmlearn.train.prefetch import DevicePrefetch
from mmlearn.train.profiler import StepProfiler
from mmlearn.train.step import check_finite, train_step

Results = dict[str, Metric]
Hook = Callable[[int, dict[str, float]], None]


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  hooks: Sequence[Hook] = (),
  allow_config_changes: bool = False,
  fallback: bool = False,
  profile_steps: tuple[int, int] | None = None,
) -> Results:
  """Trains `config` in `workdir` (resuming if it holds checkpoints) and returns the final eval metrics.

  Everything is validated and built, and a resumed state restored, before anything is written to
  `workdir`; a refused new run leaves no workdir behind. The workdir is locked for the whole run (see
  `mmlearn.runs.workdir`). `allow_config_changes` lets a resume change logging, evaluation and length
  keys; `fallback` resumes from the newest intact checkpoint when the latest is damaged. `hooks` are
  called as `hook(step, metrics)` after each log interval (e.g. to stop a run early).
  `profile_steps=(start, end)` traces those steps with `jax.profiler`.
  """
  checks.check(config)
  created = workdir_lib.prepare(workdir)
  try:
    with workdir_lib.exclusive(workdir, enabled=jax.process_index() == 0):
      changed = workdir_lib.check_resume(workdir, config, allow_changes=allow_config_changes)
      run = setup.build(config)
      return _train(
        config, workdir, run, hooks=hooks, changed=changed, fallback=fallback, profile=profile_steps
      )
  except BaseException:
    if created is not None and jax.process_index() == 0:
      workdir_lib.remove_if_unused(workdir, created)
    raise


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  run: setup.Run,
  *,
  hooks: Sequence[Hook],
  changed: list[str],
  fallback: bool,
  profile: tuple[int, int] | None,
) -> Results:
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    last_saved, state = checkpointer.restore_latest(run.state, run.train_iter, fallback=fallback)
  except BaseException:
    checkpointer.close()
    raise
  if last_saved is not None:
    logging.info("resuming from the checkpoint at step %d", last_saved)
  if changed:
    logging.warning("resuming with changed config keys: %s", ", ".join(changed))
  if jax.process_index() == 0:  # Only now: the config describes the parameters the checkpoints hold.
    workdir_lib.write_config(workdir, config)

  use_ema = config.ema_decay > 0
  best = selection.BestCheckpoint(workdir, config.select_metric) if config.select_metric else None
  writer = MetricWriter(
    workdir,
    start_step=last_saved or 0,
    resumed=last_saved is not None,
    reevaluate=last_saved == run.num_steps,  # A finished run started again only evaluates again.
  )
  p_train_step = run.par.map(
    functools.partial(
      train_step,
      task=run.task,
      tx=run.tx,
      par=run.par,
      ema_decay=config.ema_decay,
      microbatch_size=config.microbatch_size,
    ),
    sharded_args=(1,),
    donate_argnums=(0,),
    out_layouts=(0, None),  # The new state keeps the state's layout (sharded or not); metrics replicated.
  )
  step, num_steps = int(state.step), run.num_steps
  batches = DevicePrefetch(run.train_iter, run.par.shard)
  profiler = StepProfiler(workdir, profile)
  history: list[tuple[int, dict[str, float]]] = []
  timer = (time.perf_counter(), step, 0.0)
  try:
    while step < num_steps:
      profiler.before_step(step + 1)
      batch, waited = batches.next_timed()
      state, metrics = p_train_step(state, batch)
      step += 1
      timer = (*timer[:2], timer[2] + waited)
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
      if at_log:  # A checkpoint between logs keeps the interval's history: the log averages all of it.
        history = []
      if run.any_due(step) and step < num_steps:  # The final evaluation, of all, follows the loop.
        results = run.evaluate(state.variables(ema=use_ema), due_at=step)
        log_evaluation(writer, step, results)
        if best is not None:
          best.update(step, results, state, batches.consumed_state(), write=jax.process_index() == 0)
    results = {"model/num_parameters": run.num_parameters, **run.evaluate(state.variables(ema=use_ema))}
    log_evaluation(writer, step, results)
    if best is not None:
      best.update(step, results, state, batches.consumed_state(), write=jax.process_index() == 0)
      results |= best.results(step, results, lambda: run.evaluate(best.restore(state).variables(ema=use_ema)))
      writer.write(step, {k: v for k, v in results.items() if k.startswith("best/")})
  finally:
    profiler.stop()
    batches.close()
    checkpointer.close()
    if best is not None:
      best.close()

  writer.close()
  if jax.process_index() == 0:
    print(summary_line(results, run.task.summary_metric, run.splits, step), flush=True)
  return results


def summary_line(results: Results, metric: str, splits: Sequence[str], step: int) -> str:
  """`test accuracy 99.98% (validation 99.95%) at step 640`: the task's headline metric, last split first.

  With a selected best checkpoint elsewhere than the last step, the same at that step follows.
  """
  line = _headline(results, metric, splits, step)
  best_step = results.get("best/step")
  if isinstance(best_step, int) and best_step != step:
    at_best = {k.removeprefix("best/"): v for k, v in results.items() if k.startswith("best/")}
    line += f"; best on validation: {_headline(at_best, metric, splits, best_step)}"
  return line


def _headline(results: Results, metric: str, splits: Sequence[str], step: int) -> str:
  values = [
    (split, float(np.asarray(results[f"{split}/{metric}"])))
    for split in reversed(splits)
    if f"{split}/{metric}" in results
  ]
  if not values:
    return f"finished at step {step}"
  percent = metric.rsplit("/", 1)[-1] in ("accuracy", "R@1", "R@5", "R@10")

  def show(value: float) -> str:
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"

  (first, value), rest = values[0], values[1:]
  others = ", ".join(f"{split} {show(v)}" for split, v in rest)
  return f"{first} {metric} {show(value)}" + (f" ({others})" if others else "") + f" at step {step}"


def log_evaluation(writer: MetricWriter, step: int, results: Results) -> None:
  """Writes the evaluation results and logs their headline scalars."""
  writer.write(step, results)
  headline = {
    k: round(float(np.asarray(v)), 4)
    for k, v in results.items()
    if np.ndim(v) == 0 and "class_recall" not in k and "model/" not in k
  }
  logging.info("step %d evaluation: %s", step, json.dumps(headline))


def log_progress(
  writer: MetricWriter,
  history: list[tuple[int, dict[str, float]]],
  timer: tuple[float, int, float],
  step: int,
  num_steps: int,
  batch_size: int,
) -> tuple[float, int, float]:
  """Writes the interval's mean train metrics and logs a progress line; returns the new timer.

  The line says what share of the interval's wall time the loop spent in the input pipeline (reading,
  transforming and placing batches, `DevicePrefetch.next_timed`), so a data-bound run shows as one.
  """
  (start, start_step, waited), now = timer, time.perf_counter()
  means = {f"train/{k}": float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
  elapsed = max(now - start, 1e-9)
  writer.write(step, {**means, "train/data_wait_fraction": waited / elapsed})
  steps_per_s = (step - start_step) / elapsed
  eta = (num_steps - step) / max(steps_per_s, 1e-9)
  shown = "  ".join(f"{k.removeprefix('train/')} {v:.4g}" for k, v in means.items())
  logging.info(
    "step %d/%d  %s  %.1f steps/s  %.0f examples/s  %.0f%% of the time in the input pipeline  ETA %s",
    step,
    num_steps,
    shown,
    steps_per_s,
    steps_per_s * batch_size,
    100 * waited / elapsed,
    time.strftime("%H:%M:%S", time.gmtime(eta)),
  )
  return now, step, 0.0
