"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and to `metrics.jsonl`.

Only process 0 writes, so a multi-host run produces one set of logs. The JSON lines file is the
machine-readable record sweeps and tests read; TensorBoard is for looking at curves.

Metrics are scalars, except a `ConfusionMatrix` (classification evaluation, named `<split>/confusion_matrix`):
it is drawn to `confusion_<split>.png` in the workdir and to TensorBoard as an image, and kept out of
`metrics.jsonl`, so every JSON record stays flat name -> number. An `Image` (e.g. a grid of generated
samples, `test/samples/text_to_image`) is saved as `<name, '/' -> '_'>.png` in the workdir (the latest
write; TensorBoard keeps every step's). Anything else is an error, not a silent drop.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import tensorboardX

from mmlearn.classification_metrics import ConfusionMatrix


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """The scalar metrics as floats: what JSON records (metrics.jsonl, result.json) hold."""
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
  """An RGB picture reported as a metric: `pixels` uint8 [H, W, 3].

  numpy sees the pixels, so `np.ndim(value) == 0` keeps it out of scalar records, as `ConfusionMatrix`.
  """

  pixels: np.ndarray

  def __post_init__(self):
    pixels = np.asarray(self.pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
      raise ValueError(f"an Image holds uint8 [H, W, 3] pixels, got {pixels.dtype} {pixels.shape}")

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self.pixels, dtype=dtype)


def image_png_name(metric_name: str) -> str:
  """`test/samples/text_to_image` -> `test_samples_text_to_image.png`."""
  return f"{metric_name.replace('/', '_')}.png"


def confusion_png_name(metric_name: str) -> str:
  """`test/confusion_matrix` -> `confusion_test.png`."""
  return f"confusion_{metric_name.removesuffix('/confusion_matrix').replace('/', '_')}.png"


class MetricWriter:
  def __init__(self, workdir: str):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    values = scalars(metrics)
    matrices = {k: v for k, v in metrics.items() if k not in values}
    for name, value in matrices.items():
      if not isinstance(value, ConfusionMatrix | Image):
        raise TypeError(f"metric {name!r} is not a scalar, ConfusionMatrix or Image: {type(value).__name__}")
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, int(step))
    for name, value in matrices.items():
      if isinstance(value, Image):
        self._write_image(int(step), name, value)
      else:
        self._write_confusion(int(step), name, value)
    self._tb.flush()

  def _write_confusion(self, step: int, name: str, matrix: ConfusionMatrix) -> None:
    from mmlearn import report  # Imports matplotlib: only runs that draw a matrix pay for it.

    path = os.path.join(self.workdir, confusion_png_name(name))
    picture = report.confusion_chart(path, matrix.counts, matrix.class_names, title=f"{name}, step {step}")
    self._tb.add_image(name, picture, step, dataformats="HWC")

  def _write_image(self, step: int, name: str, image: Image) -> None:
    from PIL import Image as PILImage  # Pillow comes with matplotlib; only runs that log images load it.

    PILImage.fromarray(np.asarray(image.pixels)).save(os.path.join(self.workdir, image_png_name(name)))
    self._tb.add_image(name, np.asarray(image.pixels), step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
