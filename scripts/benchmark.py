"""Training throughput of a config: the compiled step alone and the whole loop, FLOPs, and a Keras reference.

  python scripts/benchmark.py --config=configs/benchmark_keras_match.py --out=runs/bench \
    --keras_python=/tmp/kvenv/bin/python

For each batch size (`--batch_sizes`, default 32 and 256) it measures
  - step: the real `train_step` (`mmlearn.train.step`), mapped by `parallel.DataParallel` and compiled ahead
    of time, run on one fixed device-resident batch (the ceiling the input pipeline can at best reach);
  - loop: the same compiled step fed by the real `pipeline.train_iterator` over the config's dataset,
    sharded onto the devices each step, with the trainer's one host sync per chunk of steps;
  - compile time, FLOPs per example from XLA's cost analysis of the compiled step, and the achieved
    GFLOP/s of the step;
  - the machine's float32 matrix-multiply rate, measured in the same run before each batch size (a
    `--matmul_size` square `jnp.dot` under jit, median of `--repeats`), and the step's GFLOP/s as a
    fraction of it: how much of what this machine can do the step uses;
  - with `--epoch`, one whole epoch of the loop (`len(train) // batch` steps from the real iterator, one
    host sync per `log_every_steps` as the trainer), its seconds and examples/s: the figure to set
    beside another framework's epoch of the same model on the same machine (AV-MNIST against
    MultiBench, `docs/benchmark.md`);
  - the step's MFU: its FLOPs (XLA's cost analysis of the compiled step) per second over the dense peak of
    the devices for the config's `precision` (`PEAKS`, looked up by `jax.devices()[0].device_kind`; an
    unknown kind, such as a CPU, gives no MFU and the row names the kind), with the peak used in the row;
  - with `--keras_python`, the Keras reference (`--keras_script`, a separate interpreter with TensorFlow,
    which mmlearn does not need) at the same batch size, and our loop's throughput as a multiple of it.

`--noloop` times the step alone (no input pipeline after the first batch: a model whose loop would be
bound by the host, such as a ViT at 224 px, still gets its step and MFU). `--label` names the rows (a
config with overrides is not told apart by its path), and `--json_lines` appends each row to a file as one
JSON line, for runs that collect several configs (`scripts/accelerator_check.py`).

Step and loop are timed in alternating chunks (`--repeats` of `--steps` each) and each reports its
median chunk, so a machine whose load changes during the run biases neither. Writes `benchmark.md`,
`benchmark.csv` and `benchmark.json` into `--out` and prints the table; the CSV and JSON also hold
`input_setup_s`, the time to build the iterator (decoding a small split into memory, see `pipeline`).
"""

import functools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mmlearn import optim, tasks  # noqa: E402
from mmlearn import parallel as parallel_lib  # noqa: E402
from mmlearn.config import checks as config_checks  # noqa: E402
from mmlearn.config import files as config_files  # noqa: E402
from mmlearn.data import pipeline  # noqa: E402
from mmlearn.errors import ConfigError  # noqa: E402
from mmlearn.launch import report  # noqa: E402
from mmlearn.runs import restore  # noqa: E402
from mmlearn.train import state as train_state  # noqa: E402
from mmlearn.train.step import train_step  # noqa: E402

flags.DEFINE_string("config", None, "Config file (`FILE[:ARG]`).")
flags.DEFINE_multi_string("override", [], "key=value applied to the config, e.g. parallel.mode=shard_map.")
flags.DEFINE_list("batch_sizes", ["32", "256"], "Global batch sizes to measure.")
flags.DEFINE_integer("steps", 0, "Steps per timed chunk; 0 = about 2048 examples' worth (at least 4).")
flags.DEFINE_integer("repeats", 5, "Timed chunks of step and of loop, alternating; medians are reported.")
flags.DEFINE_string("out", None, "Directory for benchmark.md/.csv/.json (none: print only).")
flags.DEFINE_string("keras_python", None, "A Python with TensorFlow: also runs the Keras reference.")
flags.DEFINE_string(
  "keras_script", os.path.join(os.path.dirname(REPO), "shared", "peers", "keras_seed.py"), "The reference."
)
flags.DEFINE_integer("keras_examples", 4096, "Random examples per Keras epoch (--n of the reference).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matrices of the matmul-rate probe.")
flags.DEFINE_bool("epoch", False, "Also time one whole epoch of the training loop at each batch size.")
flags.DEFINE_bool("loop", True, "Also time the training loop (the real input pipeline); off: the step alone.")
flags.DEFINE_string("label", None, "The rows' name in the table and JSON (default: the config path).")
flags.DEFINE_string("json_lines", None, "Also append each row to this file as one JSON line.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

# Dense peak TFLOP/s of one device, by a pattern of `device_kind`: (bfloat16, float32). A GPU's float32
# peak is its TF32 tensor-core rate, which XLA uses for float32 matrix products at the default precision;
# a TPU's default precision runs float32 products through its bfloat16 units, so both columns are that.
# Patterns are tried in order; the first that matches `device_kind` (case-insensitive) wins.
PEAKS: tuple[tuple[str, str, float, float], ...] = (
  (r"H100(?!.*(PCIe|NVL))", "NVIDIA H100 SXM", 989.0, 494.5),
  (r"H200", "NVIDIA H200 (as H100 SXM)", 989.0, 494.5),
  (r"A100", "NVIDIA A100", 312.0, 156.0),
  (r"TPU v4", "TPU v4", 275.0, 275.0),
  (r"TPU v5 ?(lite|e)", "TPU v5e", 197.0, 197.0),
  (r"TPU v5p?$", "TPU v5p", 459.0, 459.0),
  (r"TPU v6 ?(lite|e)", "TPU v6e", 918.0, 918.0),
)


def device_peak(device_kind: str, precision: str) -> tuple[float | None, str]:
  """(dense peak TFLOP/s of one device for `precision`, what it is); (None, why) for an unknown kind."""
  for pattern, name, bf16, fp32 in PEAKS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      if precision == "bfloat16":
        return bf16, f"{name} bf16 dense {bf16:g} TFLOP/s"
      tf32 = "TF32 tensor" if "NVIDIA" in name else "bf16 MXU at default precision"
      return fp32, f"{name} fp32 ({tf32}) dense {fp32:g} TFLOP/s"
  return None, f"no peak known for device kind {device_kind!r}"


KERAS_LINE = re.compile(r"examples_per_s=([0-9.eE+-]+)")


def parse_keras_output(text: str) -> float:
  """The examples/s of the reference's `keras_seed examples_per_s=...` line (the last one if several)."""
  found = KERAS_LINE.findall(text)
  if not found:
    raise ValueError(f"no 'examples_per_s=' line in the Keras output:\n{text[-2000:]}")
  return float(found[-1])


def run_keras(python: str, script: str, batch_size: int, examples: int) -> float:
  """Runs the reference in its own interpreter (TensorFlow stays out of this process); returns examples/s."""
  cmd = [python, script, "--batch", str(batch_size), "--n", str(max(examples, 4 * batch_size))]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
  if done.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return parse_keras_output(done.stdout)


def flops_of(compiled: Any) -> float:
  """Total FLOPs of one call of a compiled computation (`cost_analysis` is a dict, or a list in older jax)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):
    return float(sum(a.get("flops", 0.0) for a in analysis))
  return float(analysis.get("flops", 0.0))


def matmul_gflop_per_s(size: int, repeats: int) -> float:
  """The float32 rate of a jitted `size` x `size` matrix product on the default device (median)."""
  a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32))
  product = jax.jit(lambda x: x @ x).lower(a).compile()
  jax.block_until_ready(product(a))  # Warm up (allocation, first-call work).
  calls = max(1, int(2e10 // (2 * size**3)))  # About 20 GFLOP per timing, well above timer noise.
  times = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    for _ in range(calls):
      out = product(a)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return 2 * size**3 / float(np.median(times)) / 1e9


class Bench:
  """One config at one batch size: the compiled step, a fixed batch, the real iterator, and timers."""

  def __init__(self, config, batch_size: int, *, loop: bool = True):
    config.batch_size = batch_size
    self.batch_size = batch_size
    self.par = parallel_lib.DataParallel(config.parallel.mode)
    self.par.check_batch_size(batch_size)
    sources, info = restore.load_sources(config, ("train",))
    source = sources["train"]
    self.steps_per_epoch = len(source) // batch_size
    self.log_every_steps = config.log_every_steps
    task = tasks.build(config, info=info, train_source=source)
    tx = optim.make_optimizer(config.optimizer, train_state.total_train_steps(config, len(source)))
    start = time.perf_counter()
    self.iterator = pipeline.train_iterator(
      source, batch_size=batch_size, seed=config.seed, max_tokens=config.dataset.max_tokens
    )
    self.input_setup_s = time.perf_counter() - start
    state = train_state.initial_state(config, task, tx, source, self.par.num_devices)
    self.state = self.par.place_state(state)
    self.fixed_batch = self.par.shard(next(self.iterator))
    mapped = self.mapped_step(task, tx, config.microbatch_size)
    if not hasattr(mapped, "lower"):
      raise ConfigError(f"the benchmark compiles ahead of time: use shard_map, not {config.parallel.mode}")
    start = time.perf_counter()
    self.step = mapped.lower(self.state, self.fixed_batch).compile()
    self.compile_s = time.perf_counter() - start
    # XLA's cost analysis counts a loop body once, so the FLOPs of a microbatched step (a scan over
    # chunks) are those of the same step without chunks. One device's program; every device runs one.
    counted = self.step
    if config.microbatch_size:
      counted = self.mapped_step(task, tx, 0).lower(self.state, self.fixed_batch).compile()
    self.flops_per_example = flops_of(counted) * self.par.num_devices / batch_size
    self.run_step(1)
    if loop:
      self.run_loop(1)  # Warm both paths (first-call allocations, the iterator's first batches).

  def mapped_step(self, task, tx, microbatch_size: int):
    """The trainer's step mapped over the devices, the state donated as in the trainer."""
    return self.par.map(
      functools.partial(train_step, task=task, tx=tx, par=self.par, microbatch_size=microbatch_size),
      sharded_args=(1,),
      donate_argnums=(0,),
      out_layouts=(0, None),
    )

  def run_step(self, steps: int) -> float:
    """Seconds for `steps` steps on the fixed device-resident batch."""
    start = time.perf_counter()
    metrics = []
    for _ in range(steps):
      self.state, m = self.step(self.state, self.fixed_batch)
      metrics.append(m)
    jax.device_get(metrics)
    jax.block_until_ready(self.state)
    return time.perf_counter() - start

  def run_loop(self, steps: int) -> float:
    """Seconds for `steps` steps of the training loop: next batch, shard, step; one host sync at the end."""
    start = time.perf_counter()
    metrics = []
    for _ in range(steps):
      self.state, m = self.step(self.state, self.par.shard(next(self.iterator)))
      metrics.append(m)
    jax.device_get(metrics)  # As the trainer at a log interval.
    jax.block_until_ready(self.state)
    return time.perf_counter() - start

  def run_epoch(self) -> float:
    """Seconds for one epoch of the loop, synchronising with the host every `log_every_steps`."""
    start, done = time.perf_counter(), 0
    while done < self.steps_per_epoch:
      chunk = min(self.log_every_steps, self.steps_per_epoch - done)
      self.run_loop(chunk)
      done += chunk
    return time.perf_counter() - start


def measure(
  config, batch_size: int, steps: int, repeats: int, *, epoch: bool = False, loop: bool = True
) -> dict[str, Any]:
  bench = Bench(config, batch_size, loop=loop)
  step_times, loop_times = [], []
  for _ in range(repeats):
    step_times.append(bench.run_step(steps))
    if loop:
      loop_times.append(bench.run_loop(steps))
  step_s = float(np.median(step_times)) / steps
  step_eps = batch_size / step_s
  loop_eps = steps * batch_size / float(np.median(loop_times)) if loop else None
  timed_epoch = {}
  if epoch:
    seconds = bench.run_epoch()
    timed_epoch = {"epoch_s": seconds, "epoch_examples_per_s": bench.steps_per_epoch * batch_size / seconds}
  precision = str(config.get("precision", "float32"))
  kind = jax.devices()[0].device_kind
  peak, peak_name = device_peak(kind, precision)
  step_flop_per_s = bench.flops_per_example * step_eps
  return {
    "batch_size": batch_size,
    "step_examples_per_s": step_eps,
    "loop_examples_per_s": loop_eps,
    "loop_over_step": loop_eps / step_eps if loop_eps is not None else None,
    "compile_s": bench.compile_s,
    "input_setup_s": bench.input_setup_s,
    "mflop_per_example": bench.flops_per_example / 1e6,
    "step_gflop_per_s": step_flop_per_s / 1e9,
    "step_ms": step_s * 1e3,
    "gflop_per_step": bench.flops_per_example * batch_size / 1e9,
    "precision": precision,
    "device_kind": kind,
    "num_devices": bench.par.num_devices,
    "peak_tflop_per_s": peak,
    "peak": peak_name,
    "mfu": step_flop_per_s / (peak * 1e12 * bench.par.num_devices) if peak else None,
    "steps_per_chunk": steps,
    "repeats": repeats,
    **timed_epoch,
  }


def table(rows: list[dict[str, Any]]) -> str:
  header = [
    "config",
    "batch",
    "step examples/s",
    "loop examples/s",
    "loop / step",
    "compile (s)",
    "MFLOP / example",
    "step GFLOP/s",
    "of matmul rate",
    "step (ms)",
    "MFU",
  ]
  epoch = any("epoch_s" in r for r in rows)
  if epoch:
    header += ["epoch (s)", "epoch examples/s"]
  keras = any("keras_examples_per_s" in r for r in rows)
  if keras:
    header += ["Keras examples/s", "loop / Keras"]
  cells = []
  peaks = sorted({r["peak"] for r in rows})
  for r in rows:
    row = [
      f"`{r['config']}`",
      r["batch_size"],
      f"{r['step_examples_per_s']:,.0f}",
      "-" if r["loop_examples_per_s"] is None else f"{r['loop_examples_per_s']:,.0f}",
      "-" if r["loop_over_step"] is None else f"{r['loop_over_step']:.0%}",
      f"{r['compile_s']:.1f}",
      f"{r['mflop_per_example']:.1f}",
      f"{r['step_gflop_per_s']:.1f}",
      f"{r['step_over_matmul']:.0%} of {r['matmul_gflop_per_s']:.0f}",
      f"{r['step_ms']:.2f}",
      "n/a" if r["mfu"] is None else f"{r['mfu']:.1%} of {r['peak_tflop_per_s']:g} TFLOP/s",
    ]
    if epoch:
      row += [f"{r['epoch_s']:.1f}", f"{r['epoch_examples_per_s']:,.0f}"]
    if keras:
      row += [f"{r['keras_examples_per_s']:,.0f}", f"{r['loop_over_keras']:.1f}x"]
    cells.append(row)
  notes = "".join(f"\nMFU peak: {p}." for p in peaks)
  return report.markdown_table(header, cells) + notes + ("\n" if notes else "")


def benchmark(
  path: str,
  overrides: list[str],
  batch_sizes: list[int],
  *,
  steps: int = 0,
  repeats: int = 5,
  keras_python: str | None = None,
  keras_script: str | None = None,
  keras_examples: int = 4096,
  matmul_size: int = 2048,
  epoch: bool = False,
  loop: bool = True,
  label: str | None = None,
) -> list[dict[str, Any]]:
  """One result row per batch size (see the module docstring)."""
  rows = []
  for batch_size in batch_sizes:
    config = config_files.load_config(path, overrides)
    config_checks.check(config)
    chunk = steps or max(4, 2048 // batch_size)
    matmul = matmul_gflop_per_s(matmul_size, repeats)
    row = {"config": label or path, **measure(config, batch_size, chunk, repeats, epoch=epoch, loop=loop)}
    row |= {"matmul_gflop_per_s": matmul, "step_over_matmul": row["step_gflop_per_s"] / matmul}
    if keras_python and loop:
      row["keras_examples_per_s"] = run_keras(keras_python, keras_script, batch_size, keras_examples)
      row["loop_over_keras"] = row["loop_examples_per_s"] / row["keras_examples_per_s"]
    rows.append(row)
  return rows


def main(argv):
  del argv
  rows = benchmark(
    FLAGS.config,
    FLAGS.override,
    [int(b) for b in FLAGS.batch_sizes],
    steps=FLAGS.steps,
    repeats=FLAGS.repeats,
    keras_python=FLAGS.keras_python,
    keras_script=FLAGS.keras_script,
    keras_examples=FLAGS.keras_examples,
    matmul_size=FLAGS.matmul_size,
    epoch=FLAGS.epoch,
    loop=FLAGS.loop,
    label=FLAGS.label,
  )
  markdown = table(rows)
  print(markdown)
  if FLAGS.json_lines:
    with open(FLAGS.json_lines, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "benchmark.md"), "w") as f:
      f.write(markdown)
    report.write_csv(os.path.join(FLAGS.out, "benchmark.csv"), rows)
    environment = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count()}
    with open(os.path.join(FLAGS.out, "benchmark.json"), "w") as f:
      json.dump({"environment": environment, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
