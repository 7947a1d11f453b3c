"""The `linear_probe` evaluator: a multinomial logistic regression on the frozen model's embeddings.

The standard probe of a representation (CLIP, Radford et al., 2021, appendix A.3): the task's embeddings
(`task.embed`, float32) of the training, validation and evaluated splits are computed with the current
parameters at every run, one ordered pass each (`ExampleOutputs`, on every device); with `standardize`
each dimension is centred and scaled by the training split's statistics. For every L2 penalty of the
grid a classifier is fitted on the training split, the penalty with the best **validation** top-1 is
kept (a tie goes to the larger penalty, the simpler model), and the evaluated split's top-1 is reported
once, for the classifier validation chose:

  <split>/linear_probe/top1       the evaluated split's accuracy
  <split>/linear_probe/val_top1   the chosen classifier's validation accuracy
  <split>/linear_probe/l2         the chosen penalty

So the evaluated split must be neither the training nor the validation split (a `ConfigError`): a test
number must not have chosen its own penalty.

The fit minimises `mean cross-entropy + l2 / 2 * |W|^2` (the bias is not penalised) over the whole
training split, in float32, with L-BFGS (`optax.lbfgs`, zoom line search) for a fixed number of `steps`
in one `lax.scan`. Why L-BFGS: the objective is smooth and, with l2 > 0, strictly convex, so a
quasi-Newton method reaches the optimum in tens of iterations where full-batch gradient descent needs
thousands and a step size tuned per penalty; Newton's method would need the [D*C, D*C] Hessian (millions
of entries for a 768-wide embedding and 1,000 classes). It is sklearn's default solver for this model,
which CLIP's probes used. Full batch and a fixed iteration count make the fit deterministic (no sampling,
no stopping rule that a rounding difference could move), and the penalty is an argument of one compiled
function, so the whole grid compiles once. Labels are read from the splits' stored records once.
"""

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax import lax

from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.evaluators.split_pass import ExampleOutputs, check_modality, feature_values
from mmlearn.metrics.classification import top_k_accuracy
from mmlearn.tasks.contract import Batch, Embedder, Metric, Variables

L2_GRID = tuple(10.0**e for e in range(-6, 3))  # 1e-6 ... 1e2, a decade apart.
STEPS = 100  # L-BFGS iterations per fit.

Params = dict[str, jax.Array]


def objective(params: Params, x: jax.Array, y: jax.Array, l2: jax.Array) -> jax.Array:
  """Mean cross-entropy of the linear classifier plus `l2 / 2 * |W|^2` (the bias unpenalised)."""
  logits = x @ params["w"] + params["b"]
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return cross_entropy + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit(
  x: jax.Array, y: jax.Array, l2: jax.Array | float, *, num_classes: int, steps: int
) -> tuple[Params, jax.Array]:
  """(weights {w [D, C], b [C]}, the objective at each step [steps]): `steps` of L-BFGS from zero."""
  x = jnp.asarray(x, jnp.float32)
  loss = functools.partial(objective, x=x, y=y, l2=jnp.asarray(l2, jnp.float32))
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry: tuple[Params, optax.OptState], _: None) -> tuple[tuple[Params, optax.OptState], jax.Array]:
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), value

  params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32), "b": jnp.zeros(num_classes, jnp.float32)}
  (params, _), values = lax.scan(step, (params, solver.init(params)), None, length=steps)
  return params, values


def scores(params: Params, x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"])


def select(
  train: tuple[np.ndarray, np.ndarray],
  val: tuple[np.ndarray, np.ndarray],
  l2_grid: Sequence[float],
  *,
  num_classes: int,
  steps: int,
) -> tuple[float, float, Params]:
  """(the penalty of best validation top-1, that top-1, its classifier fitted on `train`); a tie in
  validation accuracy goes to the larger penalty."""
  best: tuple[float, float, Params] | None = None
  for l2 in sorted(l2_grid, reverse=True):
    params, values = fit(*train, l2, num_classes=num_classes, steps=steps)
    if not np.isfinite(np.asarray(values)).all():
      raise FloatingPointError(f"the linear probe's objective is not finite at l2={l2:g}")
    accuracy = top_k_accuracy(scores(params, val[0]), val[1], 1)
    logging.info("linear probe: l2 %g, validation top-1 %.4f", l2, accuracy)
    if best is None or accuracy > best[1]:
      best = (float(l2), accuracy, params)
  assert best is not None  # The grid is checked non-empty.
  return best


def standardise(features: dict[str, np.ndarray], train: str) -> dict[str, np.ndarray]:
  """Every split's features centred and scaled per dimension by split `train`'s mean and deviation."""
  mean, std = features[train].mean(axis=0), features[train].std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return {name: ((x - mean) / std).astype(np.float32) for name, x in features.items()}


class LinearProbeEvaluator:
  """Fits the probe on `train_split`, chooses its penalty on `val_split`, reports the evaluated split."""

  def __init__(
    self,
    task: Embedder,
    context: EvalContext,
    sources: dict[str, Source],
    *,
    split: str,
    train_split: str,
    val_split: str,
    modality: str,
    label: str,
    l2: tuple[float, ...],
    steps: int,
    standardize: bool,
  ):
    self.split, self.train_split, self.val_split = split, train_split, val_split
    self.sources, self.label = sources, label
    self.l2, self.steps, self.standardize = l2, steps, standardize
    self.num_names = len(context.label_names.get(label, ()))

    def features(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      inputs = {key: batch[key] for key in (modality, f"{modality}_mask") if key in batch}
      return {"features": task.embed(variables, inputs)[modality].astype(jnp.float32)}

    settings = {"batch_size": context.batch_size, "max_tokens": context.max_tokens}
    self.passes = {
      name: ExampleOutputs(features, context.par, source, split=name, **settings)
      for name, source in sources.items()
    }
    self._labels: dict[str, np.ndarray] = {}

  def labels(self, name: str) -> np.ndarray:
    """Split `name`'s class indices (read once: they do not change with the parameters)."""
    if name not in self._labels:
      values = feature_values(self.sources[name], self.label, split=name).astype(np.int64).reshape(-1)
      if values.size and values.min() < 0:
        raise ConfigError(f"linear_probe: feature {self.label!r} of {name!r} holds negative values")
      self._labels[name] = values
    return self._labels[name]

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    train, val = self.train_split, self.val_split
    x = {name: self.passes[name](variables)["features"] for name in self.sources}
    y = {name: self.labels(name) for name in self.sources}
    num_classes = max([self.num_names, *(int(v.max()) + 1 for v in y.values() if v.size)])
    if self.standardize:
      x = standardise(x, train)
    l2, val_top1, params = select(
      (x[train], y[train]), (x[val], y[val]), self.l2, num_classes=num_classes, steps=self.steps
    )
    logging.info("linear probe on %s: l2 %g chosen on %s (top-1 %.4f)", self.split, l2, val, val_top1)
    yield f"{self.split}/linear_probe/top1", top_k_accuracy(scores(params, x[self.split]), y[self.split], 1)
    yield f"{self.split}/linear_probe/val_top1", val_top1
    yield f"{self.split}/linear_probe/l2", l2


@evaluator("linear_probe", requires=Embedder, split_options=("train_split", "val_split"))
def build(
  task: Embedder,
  context: EvalContext,
  source: Source,
  *,
  split: str,
  modality: str = "image",
  label: str = "label",
  train_split: str = "train",
  val_split: str = "validation",
  l2: Sequence[float] = L2_GRID,
  steps: int = STEPS,
  standardize: bool = True,
) -> LinearProbeEvaluator:
  """Top-1 of a logistic regression on the frozen embeddings, its L2 penalty chosen on validation."""
  check_modality(task, modality, "modality", "linear_probe")
  if len({split, train_split, val_split}) != 3:
    raise ConfigError(
      f"linear_probe: split, train_split and val_split must differ (got {split!r}, {train_split!r}, "
      f"{val_split!r}): the evaluated split is reported once, for the penalty validation chose"
    )
  grid = (l2,) if isinstance(l2, int | float) else tuple(l2)
  if not grid or any(isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 for v in grid):
    raise ConfigError(f"linear_probe: l2 must be a non-empty tuple of penalties >= 0, got {l2!r}")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
    raise ConfigError(f"linear_probe: steps must be a positive integer, got {steps!r}")
  missing = [name for name in (train_split, val_split) if name not in context.sources]
  if missing:
    loaded = ", ".join(context.sources)
    raise ConfigError(f"linear_probe: split(s) {missing} are not loaded; loaded: {loaded}")
  sources = {train_split: context.sources[train_split], val_split: context.sources[val_split], split: source}
  return LinearProbeEvaluator(
    task,
    context,
    sources,
    split=split,
    train_split=train_split,
    val_split=val_split,
    modality=modality,
    label=label,
    l2=tuple(float(v) for v in grid),
    steps=steps,
    standardize=bool(standardize),
  )
