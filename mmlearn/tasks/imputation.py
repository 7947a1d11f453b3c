"""Generative imputation: a trained MVAE or flow run as the `generate` of `mmlearn.data.missing.impute`.

An MVAE run draws any absent modality from the product of the present ones' experts; a flow run draws
its target (the image) from its condition (the other modality), and leaves an absent condition at 0.
Both are `Generator`s (`mmlearn.tasks.contract`): `impute(variables, batch, present, rng, temperature,
targets)`.

`mmlearn.data.missing` fills absent inputs in the numpy data pipeline and loads no runs. The
classification task does, with the run loader it is given (`RunLoader`): reading a run back builds its
task, so the code that restores runs imports the tasks, not the other way round.
"""

from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from mmlearn.errors import ConfigError
from mmlearn.tasks.contract import Generator, RunLoader, Variables

Generate = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], int], dict[str, np.ndarray]]


def modelled(config: ml_collections.ConfigDict) -> set[str]:
  """The modalities a generator run reads or draws: the MVAE's all, the flow's condition and target."""
  extra = {config.flow.target} if config.task == "flow" else set()
  return set(config.model.modalities) | extra


def check_run(config: ml_collections.ConfigDict, workdir: str, modalities: Sequence[str]) -> None:
  """A ConfigError unless `workdir` is an MVAE or flow run that models every one of `modalities`."""
  if config.task not in ("mvae", "flow"):
    raise ConfigError(
      f"missing.generative_workdir {workdir} is a {config.task!r} run, not an 'mvae' run or a 'flow' run"
    )
  lacking = sorted(set(modalities) - modelled(config))
  if lacking:
    raise ConfigError(f"the {config.task} run {workdir} does not model modality(ies) {', '.join(lacking)}")


ROWS = 64  # Rows sampled at once are padded to a multiple of this (or to the whole batch).


def generator(
  task: Generator, variables: Variables, modalities: Sequence[str], temperature: float
) -> Callable[[dict[str, np.ndarray], dict[str, np.ndarray], int], dict[str, np.ndarray]]:
  """`impute`'s `generate(batch, present, seed) -> batch` from an MVAE or flow task and its variables.

  Only the rows that lack a modality are sampled (a flow pays 20 network passes per row), padded to a
  multiple of `ROWS` so that a few programs serve every missing rate. Row i draws from
  `fold_in(key(seed), i)`: an example's sample depends on its seed and place in the batch, not on which
  other rows lack what.
  """
  fill = jax.jit(
    lambda batch, present, keys, targets: task.impute(variables, batch, present, keys, temperature, targets),
    static_argnums=3,
  )

  def generate(
    batch: dict[str, np.ndarray], present: dict[str, np.ndarray], seed: int
  ) -> dict[str, np.ndarray]:
    """Decodes only the modalities some example lacks (a batch that lacks none is returned as it is)."""
    targets = tuple(m for m in modalities if not np.all(present[m]))
    if not targets:
      return batch
    lacking = np.flatnonzero(~np.all([present[m] for m in targets], axis=0))
    size = min(-(-len(lacking) // ROWS) * ROWS, len(present[targets[0]]))
    rows = np.concatenate([lacking, np.full(size - len(lacking), lacking[0])])  # Padding repeats a row.
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(rows)
    inputs = {m: batch[m][rows] for m in modalities} | {
      k: batch[k][rows] for k in batch if k.endswith("_mask")
    }
    filled = jax.device_get(fill(inputs, {m: present[m][rows] for m in present}, keys, targets))
    out = dict(batch)
    for key, value in filled.items():
      out[key] = np.array(batch[key])
      out[key][lacking] = np.asarray(value)[: len(lacking)].astype(out[key].dtype)
    return out

  return generate


def load_generator(
  load_run: RunLoader, workdir: str | None, modalities: Sequence[str], temperature: float
) -> Generate:
  """`impute`'s `generate` from a trained MVAE or flow run that models every modality of the classifier."""
  if not workdir:
    raise ConfigError(
      "missing.imputation='generative' needs missing.generative_workdir (a trained mvae or flow run)"
    )
  config, task, variables = load_run(workdir)
  check_run(config, workdir, modalities)
  if not isinstance(task, Generator):
    raise ConfigError(f"missing.generative_workdir {workdir}: its {config.task!r} task generates nothing")
  return generator(task, variables, modalities, temperature)
