"""`--profile_steps=START,END`: a `jax.profiler` trace of those training steps, in `<workdir>/profile`.

The trace opens in TensorBoard's profile plugin or in Perfetto (`ui.perfetto.dev`, the `.trace.json.gz`
next to the `.xplane.pb`). Steps before START (compilation, warm-up) stay out of it; the trace stops
only after step END's computation has finished, not merely been dispatched.
"""

import os

import jax

from mmlearn.errors import ConfigError


def parse_steps(text: str | None) -> tuple[int, int] | None:
  """ "10,20" -> (10, 20); None or "" -> None."""
  if not text:
    return None
  try:
    start, end = (int(part) for part in text.split(","))
  except ValueError:
    raise ConfigError(f"--profile_steps takes START,END (two step numbers), got {text!r}") from None
  if not 0 < start <= end:
    raise ConfigError(f"--profile_steps needs 0 < START <= END, got {text!r}")
  return start, end


class StepProfiler:
  """Starts a trace before step `start` runs and stops it after step `end` completes."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    self.directory = os.path.join(workdir, "profile")
    self.steps = steps
    self.active = False

  def before_step(self, step: int) -> None:
    """`step` is the 1-based number of the step about to run."""
    if self.steps and step == self.steps[0] and jax.process_index() == 0:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True

  def after_step(self, step: int, outputs: object) -> None:
    if self.active and self.steps is not None and step == self.steps[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
