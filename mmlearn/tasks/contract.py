"""The task contract: what the trainer, the evaluators and the scripts may rely on, in one place.

A task bundles a model with its loss (scenic's model objects), so one training loop serves
classification, retrieval and generation alike. `Task` is what the trainer calls. What an evaluator or
a script needs beyond it is a capability of its own, declared by the tasks that have it and checked as
a protocol (`isinstance(task, Generator)`), never by looking for attribute names:

  Classifier     logits of the classes            classification and robustness evaluators, coherence judge
  Embedder       unit-norm embeddings per modality retrieval evaluator, scripts/retrieve.py
  ExampleLosses  per-example loss terms           the `loss` evaluator (the MVAE's ELBO, the flow's loss)
  Generator      conditional samples, imputation  samples and coherence evaluators, scripts/generate.py,
                                                  generative imputation of missing modalities
  ChunkedContrastive  embeddings, then their loss the trainer's gradient caching (`microbatch_size` on a
                                                  contrastive loss: `mmlearn.train.grad_cache`)

Task classes are registered by name (`mmlearn.tasks.registry.TASKS`) as `TaskFactory`s: the class
builds a task from the run's config, and owns its config sections (`config_sections`: defaults) and
their checks (`check_config`), so a run's config holds only the sections of its own task.

Models are handled through Flax's variables, `{"params": ..., **collections}`: `init` returns them and
every other method takes them, so a model with BatchNorm (`batch_stats`) needs nothing special. `loss`
returns the updated mutable collections as its third value (`{}` for a stateless model); the trainer
differentiates with respect to `variables["params"]` only.

`loss` is per-device code: it sees the device's share of the global batch and returns that share's
loss, so that the mean over devices is the global loss (the trainer `pmean`s the gradients). It is
always given the step (for schedules inside the loss, e.g. KL annealing) and one random key per
example, keyed by the example's index in the global batch (`mmlearn.rngs`), so a stochastic loss gives
the same result on any number of devices. Dropout takes `dropout_rng`, one key per device (None:
no dropout, e.g. in tests).
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, TypeVar, cast, runtime_checkable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmlearn.data.pipeline import Source, TrainingData
from mmlearn.metrics.classification import ConfusionMatrix
from mmlearn.metrics.images import Image

if TYPE_CHECKING:  # Only for annotations: the pipeline's missing-modality masks need no task.
  import tensorflow_datasets as tfds

  from mmlearn.data.missing import MissingModalities

# Any nesting of dicts and arrays (parameters, optimizer states): pytrees have no narrower static type.
PyTree: TypeAlias = Any
# Flax variables: {"params": ..., **mutable collections}.
Variables: TypeAlias = Mapping[str, PyTree]
# A batch by feature name: numpy arrays from the pipeline, jax arrays (or tracers) inside a step.
Batch: TypeAlias = Mapping[str, np.ndarray | jax.Array]
# A metric's value: a scalar (a Python or numpy number, a 0-d array), an array (e.g. per-class values), or
# what the metric writer draws. numpy sees each as an array: `np.ndim(value) == 0` tells a scalar.
Metric: TypeAlias = float | np.ndarray | np.generic | jax.Array | ConfusionMatrix | Image
ConfigDict: TypeAlias = ml_collections.ConfigDict


class LoadedRun(NamedTuple):
  """A trained run read back from its workdir: its config, its task and the variables it evaluates with."""

  config: ConfigDict
  task: "Task"
  variables: Variables


# Reads a trained run back by workdir (`mmlearn.runs.restore.load_run_variables`). Handed to tasks and
# evaluators that use another run (a generator for imputation, a judge), so they need not import the
# code that restores runs, which builds tasks.
RunLoader: TypeAlias = Callable[[str], LoadedRun]


class Task(Protocol):
  """What the trainer calls. Tasks subclass it, and inherit the default `training_data`."""

  # Read-only (properties here), so a class attribute, a property or an instance attribute implements each.

  @property
  def summary_metric(self) -> str:
    """The metric a run's final summary line leads with, without its split prefix (e.g. "accuracy")."""
    ...

  @property
  def separable_loss(self) -> bool:
    """True when the loss is a mean of per-example terms, so a batch's gradient is the mean of its equal
    chunks' gradients (`config.microbatch_size`); False for losses that couple examples (in-batch
    negatives)."""
    ...

  @property
  def default_evaluators(self) -> tuple[str, ...]:
    """The evaluators a run gets on every `dataset.eval_splits` split when `config.evals` names none."""
    ...

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    """The initial variables (`{"params": ..., **collections}`), given one batch in the pipeline's format."""
    ...

  def loss(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """(scalar loss, metrics, updated collections) of this device's examples; `rng`: one key per example."""
    ...

  def training_data(self) -> TrainingData:
    """How the training split is read (a data hook): the whole split, shuffled, unchanged by default."""
    return TrainingData()


class TaskFactory(Protocol):
  """A registered task class: its config sections with their checks, and its constructor."""

  def __call__(
    self,
    config: ConfigDict,
    *,
    info: "tfds.core.DatasetInfo | None" = None,
    vocab_size: int | None = None,
    train_source: Source | None = None,
    load_run: RunLoader | None = None,
  ) -> Task:
    """The task of `config`; `train_source` (the training split) and `load_run` where the task uses them."""
    ...

  def config_sections(self) -> dict[str, ConfigDict]:
    """The task's own top-level config sections and their defaults (`mmlearn.config.schema`)."""
    ...

  def check_config(self, config: ConfigDict) -> None:
    """Raises a one-line `ConfigError` for a value of the task's sections that cannot run."""
    ...


class RegisteredTask(Task, Protocol):
  """The instances of a registered task class, as `mmlearn.tasks.registry.register` checks them: a `Task`
  built by `TaskFactory`'s constructor, with the class's config sections and checks as static methods.

  (A class object matched against `TaskFactory` itself would be called through its metaclass, so its
  constructor would go unchecked; `register` checks `type[RegisteredTask]` instead.)
  """

  def __init__(
    self,
    config: ConfigDict,
    *,
    info: "tfds.core.DatasetInfo | None" = None,
    vocab_size: int | None = None,
    train_source: Source | None = None,
    load_run: RunLoader | None = None,
  ) -> None: ...

  @staticmethod
  def config_sections() -> dict[str, ConfigDict]: ...

  @staticmethod
  def check_config(config: ConfigDict) -> None: ...


@runtime_checkable
class Classifier(Protocol):
  """A task that predicts classes (classification, robustness, and the coherence evaluator's judge)."""

  class_names: Sequence[str]

  def logits(self, variables: Variables, batch: Batch) -> jax.Array:
    """Evaluation-mode float32 logits [B, num_classes] (running BatchNorm statistics, no dropout)."""
    ...

  @property
  def missing(self) -> "MissingModalities":
    """The run's missing-modality settings: evaluation batches miss modalities at its test rates."""
    ...


@runtime_checkable
class Embedder(Protocol):
  """A dual encoder: the retrieval evaluator ranks one modality's embeddings against the other's."""

  modalities: tuple[str, ...]  # The two modalities, sorted.
  relevance: tuple[str, ...]  # Features that make two items relevant to each other; () = the pair only.
  query_chunk: int
  random_baseline: bool

  def embed(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    """Unit-norm evaluation-mode embeddings [B, D] of the modalities present in `batch`."""
    ...


@runtime_checkable
class ExampleLosses(Protocol):
  """A task whose evaluation is the mean over a split of per-example terms (the `loss` evaluator)."""

  def example_losses(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """{name: [B]} evaluation terms of each example (`rng`: one key per example, as `loss`'s)."""
    ...


SampleOption: TypeAlias = float | int | str | None


@runtime_checkable
class Generator(Protocol):
  """A task that draws one modality given others (the MVAE, the flow)."""

  modalities: tuple[str, ...]
  array_modalities: tuple[str, ...]  # The modalities it decodes to arrays (images, spectrograms).
  temperature: float  # Sampling's default temperature (the run's).
  grid_conditions: int  # Sample grids: rows (the split's first examples) ...
  grid_samples: int  # ... and samples per row; 0 disables the grids.
  sample_options: tuple[str, ...]  # The keyword options `sample` takes beyond the contract's.

  def sample(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    temperature: float | None = None,
    *,
    condition: tuple[str, ...],
    target: str,
    num_samples: int = 1,
    **options: SampleOption,
  ) -> tuple[jax.Array, jax.Array | None]:
    """`num_samples` draws of `target` from the `condition` modalities alone: (x [B, num_samples, ...],
    token mask or None). Deterministic in `rng` (one key, or one per example)."""
    ...

  def impute(
    self,
    variables: Variables,
    batch: Batch,
    present: Mapping[str, jax.Array | np.ndarray],
    rng: jax.Array,
    temperature: float = 1.0,
    targets: Sequence[str] | None = None,
  ) -> dict[str, np.ndarray | jax.Array]:
    """`batch` with the inputs absent by `present` (bool [B] per modality) drawn from the present ones."""
    ...

  def sample_conditions(self, target: str) -> tuple[str, ...]:
    """The modalities `target` can be drawn from, one at a time (the coherence evaluator's conditions)."""
    ...


@runtime_checkable
class ChunkedContrastive(Protocol):
  """A task whose examples interact only through per-example embeddings (in-batch negatives).

  Its `loss` must equal `embedding_loss(params, embed_for_training(variables, batch, dropout_rng))`, so
  the trainer can embed a batch chunk by chunk and still take the whole batch's gradient (GradCache,
  Gao et al. 2021; `mmlearn.train.grad_cache`).
  """

  def embed_for_training(
    self, variables: Variables, batch: Batch, dropout_rng: jax.Array | None
  ) -> dict[str, jax.Array]:
    """Training-mode embeddings {name: [B, D]} of this device's examples (dropout from `dropout_rng`)."""
    ...

  def embedding_loss(
    self, params: PyTree, embeddings: Mapping[str, jax.Array]
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(this device's loss, metrics) from the device's embeddings; per-device code like `Task.loss` (it may
    all-gather the other devices' embeddings). `params`: the model's parameters (a learned temperature)."""
    ...


class Evaluator(Protocol):
  def run(self, variables: Variables) -> Iterable[tuple[str, Metric]]:
    """`(metric_name, value)` pairs for one split, names prefixed with the split (`test/accuracy`)."""
    ...


def apply_for_training(
  model: nn.Module, variables: Variables, *args: PyTree, dropout_rng: jax.Array | None, **kwargs: PyTree
) -> tuple[PyTree, Variables]:
  """`model.apply(..., train=True)` with every non-parameter collection mutable: (output, updated ones)."""
  mutable = [name for name in variables if name != "params"]
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  if not mutable:
    return model.apply(variables, *args, train=True, rngs=rngs, **kwargs), {}
  out, updated = model.apply(variables, *args, train=True, rngs=rngs, mutable=mutable, **kwargs)
  return out, dict(updated)


Out = TypeVar("Out")


def apply_method(
  model: nn.Module, variables: Variables, method: Callable[..., Out], /, *args: PyTree, **kwargs: PyTree
) -> Out:
  """`model.apply(variables, *args, method=method, **kwargs)`: `method`'s output, typed as `method` says."""
  # flax types `apply`'s result as the output or the (output, updated collections) pair that `mutable`
  # asks for; without `mutable` it is the output.
  return cast(Out, model.apply(variables, *args, method=method, **kwargs))
