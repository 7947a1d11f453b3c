"""Generative imputation: a trained MVAE run as the `generate` of `mmlearn.data.missing.impute`.

`mmlearn.data.missing` fills absent inputs in the numpy data pipeline and must not load runs: that needs
JAX, the run's checkpoint and the trainer's builders (`mmlearn.restore`), and the trainer imports the
pipeline. So whoever builds the pipeline (the trainer, `scripts/robustness.py`) hands `load_generator`
to `missing.from_config`, which calls it only for `missing.imputation = "generative"`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mmlearn import restore
from mmlearn.errors import ConfigError


def check_run(config: ml_collections.ConfigDict, workdir: str, modalities: Sequence[str]) -> None:
  """A ConfigError unless `workdir` is an MVAE run that models every one of `modalities`."""
  if config.task != "mvae":
    raise ConfigError(f"missing.generative_workdir {workdir} is a {config.task!r} run, not an 'mvae' run")
  lacking = sorted(set(modalities) - set(config.model.modalities))
  if lacking:
    raise ConfigError(f"the MVAE run {workdir} does not model modality(ies) {', '.join(lacking)}")


def generator(task: Any, variables: Any, modalities: Sequence[str], temperature: float) -> Callable:
  """`impute`'s `generate(batch, present, seed) -> batch` from an `MVAETask` and its variables."""
  fill = jax.jit(
    lambda batch, present, key, targets: task.impute(variables, batch, present, key, temperature, targets),
    static_argnums=3,
  )

  def generate(batch: dict[str, np.ndarray], present: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Decodes only the modalities some example lacks (a batch that lacks none is returned as it is)."""
    targets = tuple(m for m in modalities if not np.all(present[m]))
    if not targets:
      return batch
    inputs = {m: batch[m] for m in modalities} | {k: batch[k] for k in batch if k.endswith("_mask")}
    return jax.device_get(fill(inputs, present, jax.random.key(seed), targets))

  return generate


def load_generator(workdir: str | None, modalities: Sequence[str], temperature: float) -> Callable:
  """`impute`'s `generate` from a trained MVAE run, which must model every modality of the classifier."""
  if not workdir:
    raise ConfigError("missing.imputation='generative' needs missing.generative_workdir (a trained mvae run)")
  config = restore.read_config(workdir)
  check_run(config, workdir, modalities)
  _, _, task, variables = restore.load_run(config, workdir, ())
  return generator(task, variables, modalities, temperature)
