"""One command that measures mmlearn on an accelerator and writes everything under one folder (issue 37).

  python3 scripts/accelerator_check.py --out=/tmp/accel --avmnist_dir=shared/data/avmnist --wheels=.whl
  python3 scripts/accelerator_check.py --out=/tmp/accel_smoke --smoke     # every step, tiny, on the CPU

Steps, each in its own process with its own timeout and log (`logs/<step>.log`), so one that fails or
hangs does not lose the others; `steps.json` records each one's status, seconds and note. In the order
they run (the issue's targets first, `STEPS`):
  - deps: the packages of requirements.txt that mmlearn imports at run time; any missing are installed
    from the wheel folder `--wheels` into `--site` (`pip install --no-index --no-deps --target`), which
    the later steps see on PYTHONPATH. Without the wheels the step says what is missing.
    `--build_wheels=DIR` (on a machine with PyPI) downloads them for Python 3.12 on x86-64 Linux instead.
  - facts: `nvidia-smi`, the Python, jax, jaxlib, flax, optax, orbax, torch versions and `jax.devices()`
    -> facts.json, facts.txt.
  - bench_vit_bf16, then (after prepare_avmnist: the AV-MNIST build in `--prepare_workers` processes)
    bench_avmnist, torch_avmnist, pytest, bench_default, default_run, bench_vit_fp32, bench_clip.
  - bench_*: `scripts/benchmark.py` on a ViT-B/16-sized dual encoder at 224 px (patch 16, width 768, 12
    blocks, 12 heads, MLP 3072; text tower width 512, 12 blocks, 8 heads; mmshapes retrieval images
    resized to 224) at batch 256 in bfloat16 and float32, the step alone; AV-MNIST concat (batch 40 and
    512, with one epoch of the real loop each); the default mmshapes classifier (batch 256 and 1024); and
    CLIP towers where `mmlearn.pretrained` registers `clip_vision` and `--clip_config` names a config.
    Each row: examples/s, step time, FLOPs per step from XLA's cost analysis of the compiled step, MFU
    against the device's dense peak for the precision (the peak is in the row) -> benchmark.jsonl,
    benchmark.md, bench/<step>/.
  - torch_avmnist: MultiBench's AV-MNIST model in PyTorch (`scripts/multibench_avmnist_torch.py`) on the
    same device right after bench_avmnist, batch 40 and 512 -> torch_avmnist.jsonl; the summary gives
    mmlearn's epoch examples/s over PyTorch's.
  - pytest: `pytest -k "precision or bf16 or sharding or core"` on the one real device (`-n
    --pytest_workers`) -> pytest.log, pytest.xml (junit).
  - default_run: `python -m mmlearn.main --config=configs/default.py` end to end: wall time and test
    accuracy -> default_run.json.
Then summary.md. Datasets are prepared under `--data_dir` (default `<out>/tfds`); AV-MNIST from the raw
files in `--avmnist_dir` (default `$MMLEARN_AVMNIST_DIR`; without them its steps are skipped, with the
reason). `--deadline_s` bounds the whole run: a step's timeout is cut to the time left, and a step whose
turn comes with too little left is skipped. `--steps` reruns some steps only (the summary is rebuilt from
what the folder holds).

`--smoke` runs every step at tiny sizes on the CPU (tiny builds, batch 8-16, a two-block ViT at 64 px, a
few hundred PyTorch examples, `configs/tiny.py`, one quick test), so nothing fails for the first time
on the device. This file imports nothing outside the standard library: it runs before the install.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST_EXPR = "precision or bf16 or sharding or core"

# Modules mmlearn imports at run time that an accelerator image may lack -> the requirement that holds it,
# and the wheels that requirement needs beyond what such an image has (KINDS.md's package list). Versions
# are requirements.txt's tested ones (and their dependencies' as installed with them).
RUNTIME_MODULES = {
  "ml_collections": "ml_collections",
  "tensorflow_datasets": "tensorflow-datasets",
  "array_record": "array-record",
  "grain": "grain",
  "tensorboardX": "tensorboardX",
  "tree": "dm-tree",
  "immutabledict": "immutabledict",
  "promise": "promise",
  "simple_parsing": "simple-parsing",
  "docstring_parser": "docstring-parser",
  "tensorflow_metadata": "tensorflow-metadata",
  "google.protobuf": "protobuf",
  "termcolor": "termcolor",
  "toml": "toml",
  "portpicker": "portpicker",
}
WHEELS = (
  "array_record==0.8.6",
  "dm-tree==0.1.10",
  "docstring_parser==0.18.0",
  "googleapis-common-protos==1.76.0",
  "grain==0.2.18",
  "immutabledict==4.3.1",
  "ml_collections==1.1.0",
  "portpicker==1.6.0",
  "simple-parsing==0.1.9",
  "tensorboardX==2.6.5",
  "tensorflow-datasets==4.9.10",
  "tensorflow-metadata==1.21.0",
  "termcolor==3.3.0",
  "toml==0.10.2",
)
SDIST_WHEELS = ("promise==2.3",)  # No wheel on PyPI: built here (pure Python).
PLATFORMS = (
  "manylinux_2_28_x86_64",
  "manylinux_2_27_x86_64",
  "manylinux_2_17_x86_64",
  "manylinux2014_x86_64",
)

VIT_B16 = {
  "model.modalities.image.patch": 16,
  "model.modalities.image.width": 768,
  "model.modalities.image.depth": 12,
  "model.modalities.image.heads": 12,
  "model.modalities.image.mlp_dim": 3072,
  "model.modalities.text.width": 512,
  "model.modalities.text.depth": 12,
  "model.modalities.text.heads": 8,
  "model.modalities.text.mlp_dim": 2048,
  "retrieval.embed_dim": 512,
  "dataset.image_size": 224,
}
VIT_SMOKE = {
  "model.modalities.image.patch": 16,
  "model.modalities.image.width": 32,
  "model.modalities.image.depth": 2,
  "model.modalities.image.heads": 2,
  "model.modalities.image.mlp_dim": 64,
  "model.modalities.text.width": 32,
  "model.modalities.text.depth": 2,
  "model.modalities.text.heads": 2,
  "model.modalities.text.mlp_dim": 64,
  "retrieval.embed_dim": 32,
  "dataset.image_size": 64,
  "dataset.config": "retrieval_tiny",
}


@dataclass
class Step:
  name: str
  timeout_s: float
  run: Callable[["Check", "Step"], tuple[str, str]]  # -> (status, note); status "ok", "failed", "skipped".
  outputs: tuple[str, ...] = ()  # Files (under --out) the step writes when it runs.


@dataclass
class Check:
  args: argparse.Namespace
  out: str
  env: dict[str, str] = field(default_factory=dict)
  started: float = field(default_factory=time.monotonic)
  results: dict[str, dict[str, Any]] = field(default_factory=dict)

  @property
  def smoke(self) -> bool:
    return self.args.smoke

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def time_left(self) -> float:
    return self.args.deadline_s - (time.monotonic() - self.started)

  def call(
    self,
    step: Step,
    cmd: list[str],
    *,
    log: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
  ) -> tuple[int | None, str, float]:
    """Runs `cmd` from the repository root, output to `logs/<log or step>.log` (appended); returns
    (exit code or None when it timed out, its output, seconds). A timed-out command's process group is
    killed (the processes this command started, nothing else)."""
    log_path = self.path("logs", f"{log or step.name}.log")
    budget = max(1.0, min(timeout or step.timeout_s, self.time_left()))
    start = time.monotonic()
    with open(log_path, "a") as f:  # Written as it runs: a run cut short keeps what its steps printed.
      f.write(f"$ {' '.join(cmd)}\n")
      f.flush()
      offset = f.tell()
      proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**self.env, **(env or {})},
        stdout=f,
        stderr=subprocess.STDOUT,
        start_new_session=True,
      )
      try:
        code: int | None = proc.wait(timeout=budget)
      except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
          os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
        f.write(f"\n[accelerator_check: killed after {budget:.0f} s]\n")
      f.flush()
      with open(log_path, errors="replace") as written:
        written.seek(offset)
        output = written.read()
      f.write(f"[exit {code}, {time.monotonic() - start:.1f} s]\n\n")
    return code, output, time.monotonic() - start

  def python(self) -> str:
    return self.args.python


def tail(text: str, lines: int = 3) -> str:
  return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-400:]


def failed(code: int | None, output: str) -> tuple[str, str]:
  return ("timeout" if code is None else "failed"), f"exit {code}: {tail(output)}"


# ---------------------------------------------------------------------------------------------- deps


def missing_modules(python: str, env: dict[str, str]) -> list[str]:
  code = "import importlib.util, json, sys\nmods = json.loads(sys.argv[1])\n"
  code += "print(json.dumps([m for m in mods if importlib.util.find_spec(m) is None]))"
  done = subprocess.run(
    [python, "-c", code, json.dumps(list(RUNTIME_MODULES))], env=env, capture_output=True, text=True
  )
  if done.returncode:
    raise RuntimeError(done.stderr[-1000:])
  return json.loads(done.stdout.strip().splitlines()[-1])


def step_deps(check: Check, step: Step) -> tuple[str, str]:
  missing = missing_modules(check.python(), check.env)
  report = {"missing_before": missing, "wheels": check.args.wheels, "site": check.args.site}
  note = "nothing missing"
  if missing:
    wheels = (
      sorted(f for f in os.listdir(check.args.wheels) if f.endswith(".whl"))
      if os.path.isdir(check.args.wheels)
      else []
    )
    if not wheels:
      report["missing_after"] = missing
      with open(check.path("deps.json"), "w") as f:
        json.dump(report, f, indent=2)
      needed = sorted({RUNTIME_MODULES[m] for m in missing})
      return "failed", (
        f"missing {', '.join(needed)} and no wheels in {check.args.wheels!r}: build them with "
        f"`python3 scripts/accelerator_check.py --build_wheels={check.args.wheels}` where PyPI is reachable"
      )
    cmd = [
      check.python(),
      "-m",
      "pip",
      "install",
      "-q",
      "--no-index",
      "--no-deps",
      "--no-compile",
      "--no-cache-dir",
      "--upgrade",
      "--target",
      check.args.site,
    ]
    code, output, _ = check.call(step, cmd + [os.path.join(check.args.wheels, w) for w in wheels])
    if code != 0:
      return failed(code, output)
    report["installed"] = wheels
    missing_after = missing_modules(check.python(), check.env)
    report["missing_after"] = missing_after
    note = f"installed {len(wheels)} wheels into {check.args.site}"
    if missing_after:
      with open(check.path("deps.json"), "w") as f:
        json.dump(report, f, indent=2)
      return "failed", f"{note}; still missing: {', '.join(missing_after)}"
  # Present is not enough (a wheel may need a newer protobuf than the image has): import what runs.
  code, output, _ = check.call(step, [check.python(), "-c", "import mmlearn.main, mmlearn.data, grain"])
  report["imports"] = "ok" if code == 0 else tail(output, 6)
  with open(check.path("deps.json"), "w") as f:
    json.dump(report, f, indent=2)
  if code != 0:
    return "failed", f"{note}; importing mmlearn fails: {tail(output)}"
  return "ok", note


def build_wheels(directory: str, python: str) -> int:
  """Downloads (and for sdist-only packages builds) the wheels `step_deps` installs, for CPython 3.12 on
  x86-64 Linux: run where PyPI is reachable; the folder then travels with the working tree."""
  os.makedirs(directory, exist_ok=True)
  platforms = [a for p in PLATFORMS for a in ("--platform", p)]
  cmd = [
    python,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *platforms,
    "-d",
    directory,
    *WHEELS,
  ]
  print("$", " ".join(cmd), flush=True)
  if code := subprocess.call(cmd):
    return code
  cmd = [python, "-m", "pip", "wheel", "--no-deps", "-w", directory, *SDIST_WHEELS]
  print("$", " ".join(cmd), flush=True)
  return subprocess.call(cmd)


# --------------------------------------------------------------------------------------------- facts

FACTS = r"""
import importlib.metadata as md, json, platform, sys
facts = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine()}
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
             "numpy", "torch", "grain", "tensorflow-datasets"):
  try:
    facts[name] = md.version(name)
  except md.PackageNotFoundError:
    pass
import jax
facts["backend"] = jax.default_backend()
facts["devices"] = [{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in jax.devices()]
try:
  import torch
  facts["torch_cuda"] = torch.cuda.is_available()
  if torch.cuda.is_available():
    facts["torch_device"] = torch.cuda.get_device_name(0)
except ImportError:
  pass
print(json.dumps(facts))
"""


def step_facts(check: Check, step: Step) -> tuple[str, str]:
  text = []
  if shutil.which("nvidia-smi"):
    _, smi, _ = check.call(step, ["nvidia-smi"])
    _, query, _ = check.call(
      step,
      [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
        "--format=csv",
      ],
    )
    text += ["$ nvidia-smi", smi.strip(), "", query.strip(), ""]
  else:
    text += ["nvidia-smi: not on PATH", ""]
  code, output, _ = check.call(step, [check.python(), "-c", FACTS])
  if code != 0:
    with open(check.path("facts.txt"), "w") as f:
      f.write("\n".join(text + [output]))
    return failed(code, output)
  facts = json.loads(output.strip().splitlines()[-1])
  facts["nvidia_smi"] = bool(shutil.which("nvidia-smi"))
  with open(check.path("facts.json"), "w") as f:
    json.dump(facts, f, indent=2)
  text += [f"{k}: {v}" for k, v in facts.items()]
  with open(check.path("facts.txt"), "w") as f:
    f.write("\n".join(text) + "\n")
  kinds = sorted({d["kind"] for d in facts["devices"]})
  return "ok", f"{len(facts['devices'])} x {', '.join(kinds)}; jax {facts.get('jax')}"


# ----------------------------------------------------------------------------------------- benchmark


def bench(
  check: Check,
  step: Step,
  label: str,
  spec: str,
  batches: list[int],
  overrides: dict[str, Any],
  extra: tuple[str, ...] = (),
) -> tuple[str, str]:
  sizes = ",".join(map(str, batches))
  cmd = [check.python(), "scripts/benchmark.py", f"--config={spec}", f"--batch_sizes={sizes}"]
  cmd += [f"--label={label}"]
  cmd += [f"--out={check.path('bench', step.name)}", f"--json_lines={check.path('benchmark.jsonl')}", *extra]
  cmd += [f"--override={k}={v}" for k, v in overrides.items()]
  if check.smoke:
    cmd += ["--steps=2", "--repeats=1", "--matmul_size=128"]
  else:
    cmd += ["--repeats=3"]
  # One process at a time: let it have most of the device's memory (JAX takes 75% by default).
  code, output, _ = check.call(step, cmd, env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"})
  if code != 0:
    return failed(code, output)
  rows = [r for r in read_jsonl(check.path("benchmark.jsonl")) if r["config"] == label]
  notes = []
  for r in rows[-len(batches) :]:
    mfu = "MFU n/a" if r.get("mfu") is None else f"MFU {r['mfu']:.1%}"
    notes.append(f"b{r['batch_size']}: {r['step_examples_per_s']:,.0f}/s, {mfu}")
  return "ok", "; ".join(notes)


def avmnist_dir(check: Check) -> str | None:
  directory = check.args.avmnist_dir
  return directory if directory and os.path.isdir(directory) else None


def step_bench_default(check: Check, step: Step) -> tuple[str, str]:
  if check.smoke:
    return bench(check, step, "default", "configs/tiny.py", [8], {})
  return bench(check, step, "default", "configs/default.py", [256, 1024], {})


AVMNIST_SPEC = "configs/avmnist/fusion.py:concat"
PREPARE = """
import json, sys, time
from mmlearn.config import files
from mmlearn.runs import restore
config = files.load_config(sys.argv[1], sys.argv[2:])
start = time.perf_counter()
sources, _ = restore.load_sources(config, ("train", "validation", "test"))
sizes = {k: len(v) for k, v in sources.items()}
seconds = time.perf_counter() - start
print(json.dumps({"config": config.dataset.config, "seconds": seconds, "examples": sizes}))
"""


def avmnist_overrides(check: Check) -> dict[str, Any]:
  return {"dataset.config": "tiny"} if check.smoke else {"dataset.workers": check.args.prepare_workers}


def step_prepare_avmnist(check: Check, step: Step) -> tuple[str, str]:
  """The AV-MNIST build from the raw files (in `--prepare_workers` processes), before anything is timed."""
  if not avmnist_dir(check):
    where = check.args.avmnist_dir
    return "skipped", f"no AV-MNIST raw files (--avmnist_dir or $MMLEARN_AVMNIST_DIR: {where!r})"
  overrides = [f"{k}={v}" for k, v in avmnist_overrides(check).items()]
  code, output, _ = check.call(step, [check.python(), "-c", PREPARE, AVMNIST_SPEC, *overrides])
  if code != 0:
    return failed(code, output)
  result = json.loads(output.strip().splitlines()[-1])
  with open(check.path("prepare_avmnist.json"), "w") as f:
    json.dump(result, f, indent=2)
  return "ok", f"{result['config']}: {result['examples']} in {result['seconds']:.0f} s"


def step_bench_avmnist(check: Check, step: Step) -> tuple[str, str]:
  if not avmnist_dir(check):
    where = check.args.avmnist_dir
    return "skipped", f"no AV-MNIST raw files (--avmnist_dir or $MMLEARN_AVMNIST_DIR: {where!r})"
  batches = [16] if check.smoke else [40, 512]
  return bench(check, step, "avmnist_concat", AVMNIST_SPEC, batches, avmnist_overrides(check), ("--epoch",))


def step_bench_vit(precision: str) -> Callable[[Check, Step], tuple[str, str]]:
  def run(check: Check, step: Step) -> tuple[str, str]:
    sizes = VIT_SMOKE if check.smoke else VIT_B16
    batches = [8] if check.smoke else [256]
    overrides = {**sizes, "precision": precision}
    return bench(
      check,
      step,
      f"vit_b16_{precision}",
      "configs/retrieval/mmshapes_vit.py",
      batches,
      overrides,
      ("--noloop",),
    )

  return run


CLIP_PROBE = """
import importlib.util, json
found = importlib.util.find_spec("mmlearn.pretrained") is not None
if found:
  import mmlearn.pretrained  # noqa: F401  (registers its towers)
from mmlearn.models.encoders import ENCODERS
print(json.dumps({"package": found, "clip_vision": "clip_vision" in ENCODERS}))
"""


def step_bench_clip(check: Check, step: Step) -> tuple[str, str]:
  code, output, _ = check.call(step, [check.python(), "-c", CLIP_PROBE])
  if code != 0:
    return failed(code, output)
  probe = json.loads(output.strip().splitlines()[-1])
  with open(check.path("clip_probe.json"), "w") as f:
    json.dump(probe, f)
  if not probe["clip_vision"]:
    return "skipped", "the encoder registry has no 'clip_vision' (mmlearn.pretrained: " + (
      "present)" if probe["package"] else "absent)"
    )
  if not check.args.clip_config:
    return "skipped", "'clip_vision' is registered; no --clip_config given (its towers need a checkpoint)"
  batches = [8] if check.smoke else [256]
  return bench(check, step, "clip_towers", check.args.clip_config, batches, {}, ("--noloop",))


# -------------------------------------------------------------------------------------------- torch

TORCH_LINE = re.compile(r"examples_per_s=([0-9.eE+-]+) epoch_s=([0-9.eE+-]+)")


def step_torch(check: Check, step: Step) -> tuple[str, str]:
  python = check.args.torch_python or check.python()
  probe = subprocess.run([python, "-c", "import torch"], env=check.env, capture_output=True, text=True)
  if probe.returncode:
    return "skipped", f"torch is not importable by {python} (--torch_python names another interpreter)"
  if check.smoke:
    runs = [(8, ["--examples=400", "--num_workers=0", "--device=cpu"])]
  else:
    runs = [(40, ["--examples=55000", "--device=auto"]), (512, ["--examples=55000", "--device=auto"])]
  notes = []
  for batch, extra in runs:
    cmd = [python, "scripts/multibench_avmnist_torch.py", f"--batch_size={batch}", *extra]
    code, output, _ = check.call(step, cmd, timeout=step.timeout_s / len(runs))
    if code != 0:
      return failed(code, output)
    found = TORCH_LINE.findall(output)
    if not found:
      return "failed", f"no examples_per_s line: {tail(output)}"
    eps, epoch_s = (float(v) for v in found[-1])
    device = re.findall(r"device=(\S+)", output)
    row = {"batch_size": batch, "examples_per_s": eps, "epoch_s": epoch_s}
    row["device"] = device[-1] if device else "?"
    with open(check.path("torch_avmnist.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    notes.append(f"b{batch}: {eps:,.0f}/s on {row['device']}")
  return "ok", "; ".join(notes)


# -------------------------------------------------------------------------------------- default run

ACCURACY_LINE = re.compile(r"^test \S*accuracy ([0-9.]+)%.*$", re.MULTILINE)


def step_default_run(check: Check, step: Step) -> tuple[str, str]:
  config = "configs/tiny.py" if check.smoke else "configs/default.py"
  workdir = check.path("default_run")
  shutil.rmtree(workdir, ignore_errors=True)  # A rerun trains anew rather than resuming a finished run.
  cmd = [check.python(), "-m", "mmlearn.main", f"--config={config}", f"--workdir={workdir}"]
  code, output, seconds = check.call(step, cmd)
  result: dict[str, Any] = {"config": config, "wall_s": seconds, "exit": code}
  found = ACCURACY_LINE.findall(output)
  result["test_accuracy"] = float(found[-1]) / 100 if found else None
  summary = [line for line in output.splitlines() if line.startswith(("test ", "finished at step"))]
  result["summary_line"] = summary[-1] if summary else None
  with open(check.path("default_run.json"), "w") as f:
    json.dump(result, f, indent=2)
  if code != 0:
    return failed(code, output)
  accuracy = "n/a" if result["test_accuracy"] is None else f"{result['test_accuracy']:.2%}"
  return "ok", f"{seconds:.0f} s wall, test accuracy {accuracy}"


# ------------------------------------------------------------------------------------------- pytest


def junit_counts(path: str) -> dict[str, int]:
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root)
  counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
  for suite in suites:
    for key in counts:
      counts[key] += int(suite.get(key, 0))
  return counts


def step_pytest(check: Check, step: Step) -> tuple[str, str]:
  expr = f"({PYTEST_EXPR}) and shard_dim" if check.smoke else PYTEST_EXPR
  xml = check.path("pytest.xml")
  cmd = [check.python(), "-m", "pytest", "-q", "-k", expr, f"--junitxml={xml}", "-p", "no:cacheprovider"]
  if not check.smoke and check.args.pytest_workers > 1:
    cmd += ["-n", str(check.args.pytest_workers)]
  # Several processes share the one device: each allocates what it uses instead of most of the memory.
  code, output, _ = check.call(step, cmd, log="pytest", env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
  if not os.path.exists(xml):
    return failed(code, output)
  counts = junit_counts(xml)
  note = (
    f"{counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors, "
    f"{counts['skipped']} skipped"
  )
  if code != 0:
    return ("timeout" if code is None else "failed"), note
  return "ok", note


# ------------------------------------------------------------------------------------------ summary


def read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = [f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
  lines += [f"| {' | '.join(str(c).replace('|', '/') for c in row)} |" for row in rows]
  return "\n".join(lines) + "\n"


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The last row of each (config label, batch size): a rerun's rows replace the earlier ones."""
  latest: dict[tuple[str, int], dict[str, Any]] = {}
  for r in rows:
    latest[(r["config"], r["batch_size"])] = r
  return list(latest.values())


def benchmark_table(rows: list[dict[str, Any]]) -> str:
  header = [
    "model",
    "batch",
    "precision",
    "step examples/s",
    "step (ms)",
    "GFLOP / step",
    "MFU",
    "peak used",
    "loop examples/s",
    "epoch examples/s",
    "compile (s)",
  ]
  cells = []
  for r in rows:
    cells.append(
      [
        f"`{r['config']}`",
        r["batch_size"],
        r["precision"],
        f"{r['step_examples_per_s']:,.0f}",
        f"{r['step_ms']:.2f}",
        f"{r['gflop_per_step']:.2f}",
        "n/a" if r.get("mfu") is None else f"{r['mfu']:.1%}",
        r["peak"],
        "-" if r.get("loop_examples_per_s") is None else f"{r['loop_examples_per_s']:,.0f}",
        f"{r['epoch_examples_per_s']:,.0f}" if "epoch_examples_per_s" in r else "-",
        f"{r['compile_s']:.1f}",
      ]
    )
  return markdown_table(header, cells)


def torch_table(bench_rows: list[dict[str, Any]], torch_rows: list[dict[str, Any]]) -> str:
  ours = {r["batch_size"]: r for r in bench_rows if r["config"] == "avmnist_concat"}
  theirs = {r["batch_size"]: r for r in torch_rows}
  header = [
    "batch",
    "mmlearn epoch examples/s",
    "mmlearn step examples/s",
    "PyTorch examples/s (device)",
    "mmlearn / PyTorch (epoch)",
  ]
  cells = []
  for batch in sorted(set(ours) | set(theirs)):
    mine, ref = ours.get(batch), theirs.get(batch)
    epoch = mine.get("epoch_examples_per_s") if mine else None
    ratio = f"{epoch / ref['examples_per_s']:.2f}x" if epoch and ref else "n/a"
    cells.append(
      [
        batch,
        f"{epoch:,.0f}" if epoch else "-",
        f"{mine['step_examples_per_s']:,.0f}" if mine else "-",
        f"{ref['examples_per_s']:,.0f} ({ref['device']})" if ref else "-",
        ratio,
      ]
    )
  return markdown_table(header, cells)


def write_summary(check: Check, steps: list[Step]) -> str:
  results = read_json(check.path("steps.json")) or {}
  facts = read_json(check.path("facts.json")) or {}
  bench_rows = latest_rows(read_jsonl(check.path("benchmark.jsonl")))
  torch_rows = list({r["batch_size"]: r for r in read_jsonl(check.path("torch_avmnist.jsonl"))}.values())
  default = read_json(check.path("default_run.json"))
  smoke = " (smoke, CPU, tiny sizes: no figure here means anything)" if check.smoke else ""
  parts = [f"# Accelerator check{smoke}\n"]
  devices = ", ".join(sorted({d["kind"] for d in facts.get("devices", [])})) or "unknown"
  names = ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch")
  versions = ", ".join(f"{k} {facts[k]}" for k in names if k in facts)
  parts.append(
    f"Device: {devices} ({facts.get('backend', '?')}). Versions: {versions or 'unknown'}. "
    "nvidia-smi and the rest: facts.txt.\n"
  )
  cells = []
  for step in steps:
    r = results.get(step.name)
    if r:
      cells.append([step.name, r["status"], f"{r['seconds']:.1f}", r["note"]])
  parts.append("## Steps\n\n" + markdown_table(["step", "status", "seconds", "note"], cells))
  if bench_rows:
    parts.append(
      "## Throughput and MFU (`scripts/benchmark.py`)\n\nFLOPs per step: XLA's cost analysis of the "
      "compiled step. MFU: those FLOPs per second over the dense peak named in the row.\n\n"
      + benchmark_table(bench_rows)
    )
  if any(r["config"] == "avmnist_concat" for r in bench_rows) or torch_rows:
    parts.append(
      "## AV-MNIST against MultiBench's model in PyTorch, back to back\n\n"
      + torch_table(bench_rows, torch_rows)
    )
  if default:
    accuracy = "n/a" if default.get("test_accuracy") is None else f"{default['test_accuracy']:.2%}"
    parts.append(
      f"## `{default['config']}` end to end\n\nWall time {default['wall_s']:.1f} s (start-up, dataset "
      f"preparation, compilation, training, evaluation), test accuracy {accuracy}; exit "
      f"{default['exit']}. Last line: `{default.get('summary_line')}`.\n"
    )
  if os.path.exists(check.path("pytest.xml")):
    counts = junit_counts(check.path("pytest.xml"))
    parts.append(
      f'## Tests on the device\n\n`pytest -k "{PYTEST_EXPR}"`: {counts["tests"]} tests, '
      f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped "
      "(pytest.log, pytest.xml).\n"
    )
  text = "\n".join(parts)
  with open(check.path("summary.md"), "w") as f:
    f.write(text)
  return text


def read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------- main

STEPS = [  # Most wanted first: a step whose turn comes past --deadline_s is skipped (rerun it with --steps).
  Step("deps", 120, step_deps, ("deps.json",)),
  Step("facts", 60, step_facts, ("facts.json", "facts.txt")),
  Step("bench_vit_bf16", 150, step_bench_vit("bfloat16"), ("bench/bench_vit_bf16/benchmark.json",)),
  Step("prepare_avmnist", 240, step_prepare_avmnist, ("prepare_avmnist.json",)),
  Step("bench_avmnist", 180, step_bench_avmnist, ("bench/bench_avmnist/benchmark.json",)),
  Step("torch_avmnist", 160, step_torch, ("torch_avmnist.jsonl",)),
  Step("pytest", 240, step_pytest, ("pytest.xml",)),
  Step("bench_default", 100, step_bench_default, ("bench/bench_default/benchmark.json",)),
  Step("default_run", 150, step_default_run, ("default_run.json",)),
  Step("bench_vit_fp32", 150, step_bench_vit("float32"), ("bench/bench_vit_fp32/benchmark.json",)),
  Step("bench_clip", 120, step_bench_clip, ("clip_probe.json",)),
]
SMOKE_TIMEOUT_S = 90
MIN_STEP_S = 20  # A step whose turn comes with less time than this left is skipped.


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
  parser.add_argument("--out", help="Folder for every output (created).")
  parser.add_argument("--smoke", action="store_true", help="Every step at tiny sizes (on the CPU).")
  parser.add_argument(
    "--avmnist_dir",
    default=os.environ.get("MMLEARN_AVMNIST_DIR"),
    help="AV-MNIST raw files (default $MMLEARN_AVMNIST_DIR).",
  )
  parser.add_argument("--data_dir", default=None, help="Prepared datasets (default <out>/tfds).")
  parser.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="Wheels of missing packages.")
  parser.add_argument("--site", default="/tmp/mmlearn_site", help="Where missing packages are installed.")
  parser.add_argument("--build_wheels", default=None, help="Download the wheels into this folder and exit.")
  parser.add_argument("--python", default=sys.executable, help="The interpreter of every step.")
  parser.add_argument("--torch_python", default=None, help="An interpreter with torch (default --python).")
  parser.add_argument("--clip_config", default=None, help="Config (FILE[:ARG]) of the CLIP towers to time.")
  parser.add_argument("--prepare_workers", type=int, default=8, help="Processes preparing AV-MNIST.")
  parser.add_argument("--pytest_workers", type=int, default=4, help="pytest-xdist workers on the device.")
  parser.add_argument("--deadline_s", type=float, default=None, help="Run bound (default 460; smoke 300).")
  parser.add_argument("--steps", default=None, help="Comma-separated steps to run (default all).")
  args = parser.parse_args(argv)
  if not args.build_wheels and not args.out:
    parser.error("--out is required")
  if args.deadline_s is None:
    args.deadline_s = 300.0 if args.smoke else 460.0
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.build_wheels:
    return build_wheels(args.build_wheels, args.python)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  os.makedirs(os.path.join(out, "bench"), exist_ok=True)
  if args.avmnist_dir:
    args.avmnist_dir = os.path.abspath(args.avmnist_dir)
  env = dict(os.environ)
  site = os.path.abspath(args.site)
  args.site = site
  env["PYTHONPATH"] = os.pathsep.join([p for p in (site, REPO, env.get("PYTHONPATH")) if p])
  env["MMLEARN_DATA_DIR"] = os.path.abspath(args.data_dir or os.path.join(out, "tfds"))
  env["PYTHONUNBUFFERED"] = "1"
  if args.avmnist_dir:
    env["MMLEARN_AVMNIST_DIR"] = args.avmnist_dir
  if args.smoke:
    # The dry run is the CPU's, whatever the machine has, and checks the plumbing, not the speed: XLA's CPU
    # backend compiles at LLVM level 1 and into the test suite's persistent cache, as the tests do.
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "jax"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  check = Check(args=args, out=out, env=env)
  chosen = set(args.steps.split(",")) if args.steps else {s.name for s in STEPS}
  unknown = chosen - {s.name for s in STEPS}
  if unknown:
    print(f"unknown steps {sorted(unknown)}; known: {[s.name for s in STEPS]}", file=sys.stderr)
    return 2
  results = read_json(check.path("steps.json")) or {}  # A rerun of some steps keeps the others' records.
  for step in STEPS:
    if step.name not in chosen:
      continue
    if args.smoke:
      step.timeout_s = min(step.timeout_s, SMOKE_TIMEOUT_S)
    start = time.monotonic()
    if check.time_left() < MIN_STEP_S:
      status, note = "skipped", f"the --deadline_s of {args.deadline_s:.0f} s was reached"
    else:
      try:
        status, note = step.run(check, step)
      except Exception as e:  # One step's failure must not lose the others.
        status, note = "failed", f"{type(e).__name__}: {e}"[-400:]
    seconds = time.monotonic() - start
    results[step.name] = {"status": status, "seconds": seconds, "note": note, "outputs": list(step.outputs)}
    elapsed = time.monotonic() - check.started
    print(f"[{elapsed:6.1f} s] {step.name}: {status} ({seconds:.1f} s) {note}", flush=True)
    with open(check.path("steps.json"), "w") as f:
      json.dump(results, f, indent=2)
  bench_rows = latest_rows(read_jsonl(check.path("benchmark.jsonl")))
  with open(check.path("benchmark.md"), "w") as f:
    f.write(benchmark_table(bench_rows) if bench_rows else "No benchmark rows.\n")
  print(write_summary(check, STEPS))
  return 0 if all(r["status"] in ("ok", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
