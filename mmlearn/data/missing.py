"""Missing modalities: per-example presence masks drawn in the pipeline, and input-level imputation.

A batch with missing modalities carries `<modality>_present` (bool [B]) for every modality the model
reads, and the inputs of absent modalities are replaced here, in numpy, before the model sees them, so no
information about an absent input can leak into the model:

  zero:     the input becomes 0 (the middle of the pipeline's [-1, 1] scale; an empty token sequence).
  mean:     the input becomes the training-set mean of that input (per position; array inputs only).
  learned:  the input is zeroed here as for `zero`, and the model replaces the encoder's output with a
            learned embedding of the absence (`mmlearn.models.classifier`).
  generative: the input becomes a sample of a trained generator (`missing.generative_workdir`) given the
            example's present modalities: a multimodal VAE (task `mvae`, `MVAETask.impute`: z from the
            product of the present experts, the absent modality decoded from it) or a flow model (task
            `flow`, `FlowTask.impute`: its target drawn from its condition; an absent condition is 0).
            The batch then has every modality (no `<m>_present`): the fusion uses the generated input
            as if it were real. This module never loads the run (that needs JAX): the classification
            task does (`mmlearn.tasks.imputation`) and hands its `impute` to `from_config`.

`MissingModalities` holds the settings (`config.missing`). It is a `pipeline.BatchTransform` of
training batches, and `evaluate(rates)` gives the `transform` of `pipeline.eval_batches`.

Masks are reproducible and need no state of their own:
  - training batch `k` draws from the generator the pipeline seeds with (stream, seed, process, k), so a
    restored iterator (whose state is the next batch number) replays them exactly;
  - an evaluation example draws one uniform number per modality from a generator seeded by (seed, its
    index in the split), and a modality is missing when that number is below the rate. Every run sees the
    same masks, and the missing examples at rate 0.2 include those at rate 0.1, so a robustness curve
    measures the rate rather than a fresh draw at each point.

No example ever loses all its modalities: where the draw removes them all, one, chosen uniformly by the
same generator, is kept. The realised rate is then a little lower than the nominal one for high rates
on several modalities.

Modality dropout (ModDrop, Neverova et al. 2016) is a training technique rather than missing data: with
probability p an example loses one of its present modalities, chosen uniformly, never the last one.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import ml_collections
import numpy as np

from mmlearn.data import pipeline
from mmlearn.errors import ConfigError

IMPUTATIONS = ("zero", "mean", "learned", "generative")
# Sample of training examples the `mean` imputation averages: a per-position mean of 4,096 examples is
# within ~0.01 of the full split's (inputs in [-1, 1]), at a fraction of a pass over 55,000 records.
MEAN_SAMPLE = 4096
_EVAL_STREAM, _MEAN_STREAM = 0x6576, 0x6D65  # Keep the generators' streams apart.


def present_key(modality: str) -> str:
  return f"{modality}_present"


def keep_one(present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Rows of `present` [B, M] with no modality left get one back, chosen uniformly."""
  empty = ~present.any(axis=1)
  if empty.any():
    present = present.copy()
    present[np.flatnonzero(empty), rng.integers(0, present.shape[1], empty.sum())] = True
  return present


def train_masks(
  modalities: Sequence[str],
  rates: Mapping[str, float],
  dropout: float,
  *,
  batch_size: int,
  rng: np.random.Generator,
) -> np.ndarray:
  """Presence [B, M] of a training batch: missing data at `rates`, then modality dropout."""
  rate = np.array([rates.get(m, 0.0) for m in modalities])
  present = keep_one(rng.random((batch_size, len(modalities))) >= rate, rng)
  if dropout > 0 and len(modalities) > 1:
    drop = (rng.random(batch_size) < dropout) & (present.sum(axis=1) > 1)
    for row in np.flatnonzero(drop):
      present[row, rng.choice(np.flatnonzero(present[row]))] = False
  return present


def eval_masks(
  modalities: Sequence[str], rates: Mapping[str, float], *, indices: np.ndarray, seed: int
) -> np.ndarray:
  """Presence [B, M] of the evaluation examples `indices` (positions in their split) at `rates`.

  Each example's draws (a uniform number per modality, and which modality it keeps if all would go) come
  from its own generator, so its mask depends on its index and the rates only, never on its batch.
  """
  rate = np.array([rates.get(m, 0.0) for m in modalities])
  present = np.empty((len(indices), len(modalities)), bool)
  for row, index in enumerate(indices):
    rng = np.random.default_rng([seed, int(index), _EVAL_STREAM])
    present[row] = rng.random(len(modalities)) >= rate
    if not present[row].any():
      present[row, rng.integers(0, len(modalities))] = True
  return present


def impute(
  batch: dict[str, np.ndarray],
  present: np.ndarray,
  modalities: Sequence[str],
  *,
  imputation: str,
  means: Mapping[str, np.ndarray] | None = None,
  generate: Callable | None = None,
  rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
  """`batch` with `<m>_present` added and the inputs of absent modalities replaced (see module doc).

  `generate(batch, present: {m: bool [B]}, seed) -> batch` fills absent inputs for `generative`; its
  seed is drawn from `rng`.
  """
  if imputation not in IMPUTATIONS:
    raise ConfigError(f"unknown imputation {imputation!r}; known: {', '.join(IMPUTATIONS)}")
  if imputation == "generative":
    if generate is None:
      raise ConfigError("generative imputation needs a trained mvae or flow run (missing.generative_workdir)")
    seed = int((rng or np.random.default_rng(0)).integers(2**31))
    filled = generate(batch, {m: present[:, j] for j, m in enumerate(modalities)}, seed)
    # A generated input stands in for the real one, so the fusion counts it as present.
    return dict(batch) | {m: np.asarray(filled[m]) for m in modalities}
  batch = dict(batch)
  for j, modality in enumerate(modalities):
    absent = ~present[:, j]
    batch[present_key(modality)] = present[:, j].copy()
    if not absent.any():
      continue
    value = batch[modality].copy()
    if imputation == "mean":
      if means is None or modality not in means:
        raise ValueError(f"mean imputation has no training-set mean for modality {modality!r}")
      value[absent] = means[modality]
    else:
      value[absent] = 0
    batch[modality] = value
    mask_key = f"{modality}_mask"
    if mask_key in batch:  # A token sequence: absent means empty.
      batch[mask_key] = batch[mask_key] & present[:, j : j + 1]
  return batch


def check_imputable(modalities: Sequence[str], imputation: str) -> None:
  """`mean` needs an array input: a mean of token ids is not a sentence."""
  tokens = sorted(set(modalities) & set(pipeline.TOKEN_FEATURES.values()))
  if imputation == "mean" and tokens:
    raise ConfigError(f"mean imputation needs array inputs; {', '.join(tokens)} is a token sequence")


def input_means(gather, num_examples: int, modalities: Sequence[str], *, seed: int) -> dict[str, np.ndarray]:
  """Per-position means of the (scaled) inputs over a seeded sample of `MEAN_SAMPLE` training examples.

  `gather(indices) -> batch` returns scaled model inputs for those positions of the training split.
  """
  rng = np.random.default_rng([seed, _MEAN_STREAM])
  sample = np.sort(rng.choice(num_examples, min(MEAN_SAMPLE, num_examples), replace=False))
  sums: dict[str, np.ndarray] = {}
  for start in range(0, len(sample), 512):
    batch = gather(sample[start : start + 512])
    for m in modalities:
      sums[m] = sums.get(m, 0.0) + batch[m].astype(np.float64).sum(axis=0)
  return {m: (s / len(sample)).astype(np.float32) for m, s in sums.items()}


@dataclasses.dataclass(frozen=True)
class MissingModalities:
  """`config.missing` for the model's modalities (sorted, the order of the `present` mask columns)."""

  modalities: tuple[str, ...]
  train_rates: Mapping[str, float]
  test_rates: Mapping[str, float]
  dropout: float = 0.0
  imputation: str = "zero"
  means: Mapping[str, np.ndarray] | None = None
  generate: Callable | None = None  # For `generative`: see `impute`.
  seed: int = 0  # Of the evaluation masks; training masks follow the run's seed through the pipeline.
  stream: ClassVar[int] = 0x7261

  @property
  def active(self) -> bool:
    """Whether training batches lose anything (the learned imputation still needs `present` in eval)."""
    return self.dropout > 0 or any(r > 0 for r in self.train_rates.values())

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    present = train_masks(
      self.modalities, self.train_rates, self.dropout, batch_size=len(next(iter(batch.values()))), rng=rng
    )
    return self._impute(batch, present, rng)

  def _impute(self, batch, present, rng):
    return impute(
      batch,
      present,
      self.modalities,
      imputation=self.imputation,
      means=self.means,
      generate=self.generate,
      rng=rng,
    )

  def evaluate(self, rates: Mapping[str, float] | None = None) -> Callable | None:
    """`eval_batches`' transform: examples miss modalities at `rates` (default: the test rates).

    None when no rate is positive: a batch without `<m>_present` has every modality present.
    """
    rates = self.test_rates if rates is None else rates
    if not any(r > 0 for r in rates.values()):
      return None

    def transform(batch: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
      present = eval_masks(self.modalities, rates, indices=indices, seed=self.seed)
      # The generative sample's key follows the batch's first example, so a split's pass is repeatable.
      return self._impute(batch, present, np.random.default_rng([self.seed, int(indices[0]), _EVAL_STREAM]))

    return transform


def from_config(
  settings: ml_collections.ConfigDict,
  modalities: Sequence[str],
  *,
  max_tokens: int,
  train_source: pipeline.Source | None = None,
  generate: Callable | None = None,
) -> MissingModalities:
  """Settings from `config.missing` for the model's `modalities`; `mean` averages `train_source`.

  `generative` needs `generate`, the trained generator's `impute` (`mmlearn.tasks.imputation`): this
  module loads no runs.
  """
  modalities = tuple(sorted(modalities))
  check_imputable(modalities, settings.imputation)
  means = None
  if settings.imputation == "mean":
    if train_source is None:
      raise ValueError("missing.from_config: the mean imputation needs the training split")

    def gather(indices: np.ndarray) -> dict[str, np.ndarray]:
      return pipeline.batch_of(train_source, indices, max_tokens)

    means = input_means(gather, len(train_source), modalities, seed=settings.seed)
  if settings.imputation == "generative" and generate is None:
    raise ValueError("missing.from_config: generative imputation needs the generator's `generate`")
  return MissingModalities(
    modalities=modalities,
    train_rates=dict(settings.train_rates),
    test_rates=dict(settings.test_rates),
    dropout=settings.modality_dropout,
    imputation=settings.imputation,
    means=means,
    generate=generate if settings.imputation == "generative" else None,
    seed=settings.seed,
  )


def check_config(settings: ml_collections.ConfigDict, modalities: Sequence[str]) -> None:
  """`config.missing`: a known imputation, rates in [0, 1) for modalities the model has."""
  if settings.imputation not in IMPUTATIONS:
    raise ConfigError(f"unknown missing.imputation {settings.imputation!r}; known: {', '.join(IMPUTATIONS)}")
  if not 0 <= settings.modality_dropout < 1:
    raise ConfigError(f"missing.modality_dropout must be in [0, 1), got {settings.modality_dropout}")
  for which in ("train_rates", "test_rates"):
    for modality, rate in settings[which].items():
      if not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ConfigError(f"missing.{which}.{modality} must be a rate in [0, 1), got {rate!r}")
      if rate > 0 and modality not in modalities:
        raise ConfigError(f"missing.{which}.{modality}: the model has no modality {modality!r}")
