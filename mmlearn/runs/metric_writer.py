"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and to `metrics.jsonl`.

Only process 0 writes, so a multi-host run produces one set of logs. The JSON lines file is the
machine-readable record sweeps and tests read; TensorBoard is for looking at curves.

Metrics are scalars, except a `ConfusionMatrix` (classification evaluation, named `<split>/confusion_matrix`):
it is drawn to `confusion_<split>.png` in the workdir and to TensorBoard as an image, and kept out of
`metrics.jsonl`, so every JSON record stays flat name -> number. An `Image` (e.g. a grid of generated
samples, `test/samples/text_to_image`) is saved as `<name, '/' -> '_'>.png` in the workdir (the latest
write; TensorBoard keeps every step's). Anything else is an error, not a silent drop.

TensorBoard tags allow only letters, digits, `_`, `-`, `.` and `/`; tensorboardX rewrites any other
character with an "illegal summary name" warning per tag and write. So TensorBoard gets `tensorboard_tag`
(`test/image_to_text/R@1` -> `test/image_to_text/R_at_1`), and `metrics.jsonl` keeps the names as given.
"""

import json
import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

import jax
import numpy as np
from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from mmlearn.metrics.classification import ConfusionMatrix
from mmlearn.metrics.images import Image, confusion_chart

if TYPE_CHECKING:  # Only the annotation: importing the tasks package builds every task module.
  from mmlearn.tasks.contract import Metric


def scalars(metrics: "Mapping[str, Metric]") -> dict[str, float]:
  """The scalar metrics as floats: what JSON records (metrics.jsonl, result.json) hold."""
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}


_ILLEGAL_TAG_CHARACTERS = re.compile(r"[^-/\w.]")


def tensorboard_tag(metric_name: str) -> str:
  """A name TensorBoard accepts: `@` -> `_at_`, any other illegal character -> `_`."""
  return _ILLEGAL_TAG_CHARACTERS.sub("_", metric_name.replace("@", "_at_"))


def scalar_summary(metric_name: str, value: float) -> Summary:
  """`summary.scalar`'s proto, built directly: that function warns "NaN or Inf found" for every
  non-finite value, and a NaN is a legitimate result here (the recall of a class a split lacks)."""
  return Summary(value=[Summary.Value(tag=tensorboard_tag(metric_name), simple_value=float(value))])


def image_png_name(metric_name: str) -> str:
  """`test/samples/text_to_image` -> `test_samples_text_to_image.png`."""
  return f"{metric_name.replace('/', '_')}.png"


def confusion_png_name(metric_name: str) -> str:
  """`test/confusion_matrix` -> `confusion_test.png`."""
  return f"confusion_{metric_name.removesuffix('/confusion_matrix').replace('/', '_')}.png"


class EventFile:
  """A TensorBoard event file written synchronously: each `add` is on disk once `flush` returns.

  tensorboardX's `SummaryWriter` queues events for a background thread, and its `flush` does not wait
  for the queue, so a run killed after a checkpoint could lose the interval before it. `purge_step`
  (a resumed run: the first step after its checkpoint) writes TensorBoard's restart marker, which hides
  the earlier files' events from that step on, so replayed steps are not shown twice.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    # The pid keeps two runs within one second (a quick resume) from sharing a file name.
    self._writer = EventsWriter(os.path.join(logdir, "events"), f".{os.getpid()}")
    if purge_step is not None:
      self._write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

  def _write(self, event: Event) -> None:
    event.wall_time = time.time()
    self._writer.write_event(event)

  def add(self, step: int, summary: Summary) -> None:
    self._write(Event(summary=summary, step=step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def is_evaluation(record: dict[str, Any]) -> bool:
  """An evaluation record: metrics other than the training intervals' `train/...` means."""
  return any(k != "step" and k != "resumed_from" and not k.startswith("train/") for k in record)


def drop_records_after(path: str, step: int, *, evaluations_at_step: bool = False) -> int:
  """Rewrites the JSON-lines file at `path` (atomically) without records past `step` (with
  `evaluations_at_step`, without the evaluation records at `step` either); returns how many it dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()

  def kept_record(record: dict[str, Any]) -> bool:
    at = record.get("step", 0)
    return at < step or (at == step and not (evaluations_at_step and is_evaluation(record)))

  kept = [line for line in lines if line.strip() and kept_record(json.loads(line))]
  if len(kept) < len(lines):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
      f.writelines(line + "\n" for line in kept)
    os.replace(temporary, path)
  return len(lines) - len(kept)


class MetricWriter:
  """Writes metrics of a run to `metrics.jsonl` and TensorBoard, continuing the logs of a restarted run.

  A run that restarts from its step-s checkpoint (s = 0: none) replays steps s+1.. exactly, so the
  records an interrupted attempt wrote past s are dropped from `metrics.jsonl` (their replay follows)
  and TensorBoard purges its events from step s+1; a resumed run (`resumed`) also gets a
  `{"step": s, "resumed_from": s}` record marking the restart. A finished run started again
  (`reevaluate`: s is its last step) only evaluates again, so its evaluation records at s are replaced.
  """

  def __init__(self, workdir: str, *, start_step: int = 0, resumed: bool = False, reevaluate: bool = False):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._jsonl: TextIO | None = None
    self._tb: EventFile | None = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      drop_records_after(path, start_step, evaluations_at_step=reevaluate)
      self._jsonl = open(path, "a")  # noqa: SIM115 (closed in close())
      logdir = os.path.join(workdir, "tensorboard")
      restarted = os.path.isdir(logdir) and bool(os.listdir(logdir))
      self._tb = EventFile(logdir, purge_step=start_step + 1 if restarted else None)
      if resumed:
        self._append({"step": start_step, "resumed_from": start_step})

  def _files(self) -> tuple[TextIO, EventFile]:
    """`metrics.jsonl` and the TensorBoard event file, which process 0 (`enabled`) alone opens."""
    assert self._jsonl is not None and self._tb is not None, "only process 0 writes metrics"
    return self._jsonl, self._tb

  def _append(self, record: dict[str, Any]) -> None:
    jsonl, _ = self._files()
    jsonl.write(json.dumps(record) + "\n")
    jsonl.flush()

  def write(self, step: int, metrics: "Mapping[str, Metric]") -> None:
    if not self.enabled:
      return
    values = scalars(metrics)
    matrices: dict[str, ConfusionMatrix | Image] = {}
    for name, value in metrics.items():
      if name in values:
        continue
      if not isinstance(value, ConfusionMatrix | Image):
        raise TypeError(f"metric {name!r} is not a scalar, ConfusionMatrix or Image: {type(value).__name__}")
      matrices[name] = value
    self._append({"step": int(step), **values})
    _, tb = self._files()
    for name, value in values.items():
      tb.add(int(step), scalar_summary(name, value))
    for name, value in matrices.items():
      if isinstance(value, Image):
        self._write_image(int(step), name, value)
      else:
        self._write_confusion(int(step), name, value)
    tb.flush()

  def flush(self) -> None:
    """Everything written so far is on disk (called before a checkpoint is declared saved)."""
    if self.enabled:
      jsonl, tb = self._files()
      jsonl.flush()
      os.fsync(jsonl.fileno())
      tb.flush()

  def _write_confusion(self, step: int, name: str, matrix: ConfusionMatrix) -> None:
    path = os.path.join(self.workdir, confusion_png_name(name))
    picture = confusion_chart(path, matrix.counts, matrix.class_names, title=f"{name}, step {step}")
    self._files()[1].add(step, summary.image(tensorboard_tag(name), picture, dataformats="HWC"))

  def _write_image(self, step: int, name: str, image: Image) -> None:
    from PIL import Image as PILImage  # Pillow comes with matplotlib; only runs that log images load it.

    PILImage.fromarray(np.asarray(image.pixels)).save(os.path.join(self.workdir, image_png_name(name)))
    self._files()[1].add(
      step, summary.image(tensorboard_tag(name), np.asarray(image.pixels), dataformats="HWC")
    )

  def close(self) -> None:
    if self.enabled:
      jsonl, tb = self._files()
      jsonl.close()
      tb.close()
