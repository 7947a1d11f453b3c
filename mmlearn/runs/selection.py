"""Model selection on validation: keep the state of the best evaluation so far beside the latest one.

`config.select_metric` (e.g. `validation/accuracy`) names an evaluation metric; every time an
evaluation reports it and it beats the best so far, the state is saved to `<workdir>/best/` (one
checkpoint, verified like the others) and `<workdir>/best.json` records the step and value, so a
resumed run keeps comparing against the same best. Losses, errors and distances are minimised,
everything else is maximised. At the end the trainer evaluates the best state on every split, so the
test numbers to report are those at the step validation chose, not at the last step.
"""

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mmlearn.errors import ConfigError
from mmlearn.runs.checkpoint import Checkpointer

if TYPE_CHECKING:  # Only the annotation: importing the tasks package builds every task module.
  from mmlearn.tasks.contract import Metric

State = TypeVar("State")  # The train state: restored in the structure of its template.

RECORD, SUBDIR = "best.json", "best"  # The record and the checkpoint directory, under the workdir.

MINIMISED = ("loss", "error", "distance", "fid", "median_rank", "nll", "bpd")


def minimised(metric: str) -> bool:
  """Whether a smaller value of `metric` is better (judged by the last part of its name)."""
  last = metric.rsplit("/", 1)[-1].lower()
  return any(word in last for word in MINIMISED)


class BestCheckpoint:
  def __init__(self, workdir: str, metric: str):
    self.workdir, self.metric = workdir, metric
    self.path = os.path.join(workdir, RECORD)
    self.record: dict[str, Any] | None = None
    if os.path.isfile(self.path):
      with open(self.path) as f:
        self.record = json.load(f)
    self.checkpointer = Checkpointer(workdir, keep=1, subdir=SUBDIR)

  @property
  def step(self) -> int | None:
    return None if self.record is None else self.record["step"]

  def improves(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.record is None:
      return True
    best = self.record["value"]
    return value < best if minimised(self.metric) else value > best

  def update(
    self, step: int, results: "Mapping[str, Metric]", state: Any, data_state: Any, *, write: bool
  ) -> bool:
    """Saves `state` as the best when `results` holds the metric and it improves; returns whether it did."""
    if self.metric not in results:
      return False
    value = float(np.asarray(results[self.metric]))
    if not self.improves(value):
      return False
    self.checkpointer.save(step, state, data_state)
    self.record = {"metric": self.metric, "step": step, "value": value}
    if write:
      tmp = f"{self.path}.tmp"
      with open(tmp, "w") as f:
        json.dump(self.record, f)
      os.replace(tmp, self.path)
    return True

  def results(
    self, step: int, results: "dict[str, Metric]", evaluate_best: Callable[[], "dict[str, Metric]"]
  ) -> "dict[str, Metric]":
    """The `best/...` results of a run that ended at `step` with `results`: the evaluation at the step
    validation selected (re-evaluated from its checkpoint with `evaluate_best`, unless it is the last
    step), and `best/step`."""
    if self.step is None:
      reported = ", ".join(sorted(k for k in results if np.ndim(results[k]) == 0))
      raise ConfigError(f"select_metric {self.metric!r} was never reported; reported: {reported}")
    if self.step != step:
      out = {f"best/{name}": value for name, value in evaluate_best().items()}
    else:
      out = {f"best/{k}": v for k, v in results.items() if "/" in k and not k.startswith("model/")}
    return {**out, "best/step": self.step}

  def restore(self, template: State) -> State:
    step = self.step
    assert step is not None, "no best state saved yet"  # Callers check `step` first (`at_best_step`).
    return self.checkpointer.restore(step, template)

  def close(self) -> None:
    self.checkpointer.close()


def check(metric: str, splits: tuple[str, ...]) -> None:
  """A metric named `<split>/<name>`, of a split some evaluator reads."""
  if metric and metric.split("/", 1)[0] not in splits:
    raise ConfigError(
      f"config.select_metric {metric!r} names no evaluated split; evaluated: {', '.join(splits)}"
    )
