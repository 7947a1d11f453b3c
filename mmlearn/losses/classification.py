"""Per-example classification losses for imbalanced classes, chosen by `config.classification.loss`.

Each loss is built once from the training split's class counts and `config.classification`, as
`build(config.classification, class_counts)`, and called as `loss(logits [B, C], labels [B]) -> [B]`
per-example losses (the task averages them). The counts come from the dataset, never from a config, so a
re-generated or re-split dataset cannot silently disagree with its loss weights.

A count of 0 (a class absent from the training split) is clamped to 1 everywhere below, so weights and
log-priors stay finite. The clamped value never weighs a training example (none has that label); it
only enters the normalisations and, for `logit_adjusted`, makes that class's prior 1/N instead of 0.

  cross_entropy:     plain softmax cross-entropy.
  inverse_frequency: cross-entropy weighted by w_c = N / (C n_c), so sum_c w_c n_c / N = 1: the weighted
                     mean over the training distribution keeps the scale of plain cross-entropy.
  class_balanced:    cross-entropy weighted by the "effective number of samples" (Cui et al. 2019),
                     w_c = (1 - beta) / (1 - beta^n_c), normalised so sum_c w_c = C. beta = 0 gives
                     uniform weights; beta -> 1 approaches inverse frequency.
  focal:             -alpha (1 - p_t)^gamma log p_t on softmax probabilities (Lin et al. 2017), p_t the
                     true class's probability. `focal_alpha` is one weight for every class (Lin et al.'s
                     alpha applied to the true class, as common softmax implementations do), so with
                     softmax it only rescales the loss; None means alpha = 1. gamma = 0, alpha = None is
                     plain cross-entropy.
  logit_adjusted:    cross-entropy of logits + tau log(prior_c), prior_c = n_c / N (Menon et al. 2021,
                     the training-time loss): the model learns balanced-error logits, and prediction is
                     the plain argmax of the unadjusted logits.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from numpy.typing import ArrayLike

from mmlearn.errors import ConfigError
from mmlearn.registry import Registry

CLASS_LOSSES = Registry("classification loss")

# A built loss: (logits [B, C], labels [B]) -> per-example loss [B].
ClassLoss = Callable[[jax.Array, jax.Array | np.ndarray], jax.Array]


def clamped_counts(class_counts: ArrayLike) -> np.ndarray:
  """The counts as float64, each at least 1 (see the module docstring)."""
  return np.maximum(np.asarray(class_counts, np.float64), 1.0)


def inverse_frequency_weights(class_counts: ArrayLike) -> np.ndarray:
  """w_c = N / (C n_c): sum_c w_c n_c / N = 1."""
  n = clamped_counts(class_counts)
  return n.sum() / (len(n) * n)


def class_balanced_weights(class_counts: ArrayLike, beta: float) -> np.ndarray:
  """w_c proportional to (1 - beta) / (1 - beta^n_c), normalised so sum_c w_c = C."""
  n = clamped_counts(class_counts)
  w = (1.0 - beta) / (1.0 - beta**n)
  return w * len(n) / w.sum()


def log_prior(class_counts: ArrayLike) -> np.ndarray:
  n = clamped_counts(class_counts)
  return np.log(n / n.sum())


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a `ConfigError` naming the first unknown loss or out-of-range hyperparameter."""
  CLASS_LOSSES.get(config.loss)
  if not 0.0 <= config.class_balanced_beta < 1.0:
    raise ConfigError(
      f"classification.class_balanced_beta must be in [0, 1), got {config.class_balanced_beta}"
    )
  if config.focal_gamma < 0:
    raise ConfigError(f"classification.focal_gamma must be >= 0, got {config.focal_gamma}")
  if config.focal_alpha is not None and config.focal_alpha <= 0:
    raise ConfigError(f"classification.focal_alpha must be positive or None, got {config.focal_alpha}")


def build(
  config: ml_collections.ConfigDict, class_counts: ArrayLike | Callable[[], ArrayLike | None] | None = None
) -> ClassLoss:
  """The loss `config.loss`; `class_counts` ([C], training split) may be None only for losses without
  class weights or priors. A zero-argument callable is called only by a loss that needs the counts, so
  that a plain cross-entropy run never reads the training labels to count them."""
  check_config(config)
  loss_class = CLASS_LOSSES.get(config.loss)
  if not loss_class.needs_counts:
    class_counts = None
  elif callable(class_counts):
    class_counts = class_counts()
  if loss_class.needs_counts and class_counts is None:
    raise ValueError(
      f"classification loss {config.loss!r} needs the training split's class counts (class_counts=None)"
    )
  return loss_class(class_counts, config)


@CLASS_LOSSES.register("cross_entropy")
class CrossEntropy:
  needs_counts = False

  def __init__(self, class_counts: ArrayLike | None, config: ml_collections.ConfigDict):
    del class_counts, config

  def __call__(self, logits: jax.Array, labels: jax.Array | np.ndarray) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class WeightedCrossEntropy:
  """Cross-entropy times the weight of each example's true class."""

  needs_counts = True
  weights: np.ndarray

  def __call__(self, logits: jax.Array, labels: jax.Array | np.ndarray) -> jax.Array:
    weights = jnp.asarray(self.weights, jnp.float32)[labels]
    return weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@CLASS_LOSSES.register("inverse_frequency")
class InverseFrequency(WeightedCrossEntropy):
  def __init__(self, class_counts: ArrayLike, config: ml_collections.ConfigDict):
    del config
    self.weights = inverse_frequency_weights(class_counts)


@CLASS_LOSSES.register("class_balanced")
class ClassBalanced(WeightedCrossEntropy):
  def __init__(self, class_counts: ArrayLike, config: ml_collections.ConfigDict):
    self.weights = class_balanced_weights(class_counts, config.class_balanced_beta)


@CLASS_LOSSES.register("focal")
class Focal:
  needs_counts = False
  # Floor of 1 - p_t: at p_t = 1 the gradient of (1 - p_t)^gamma is 0 * inf (NaN) for gamma < 1.
  tiny = 1e-30

  def __init__(self, class_counts: ArrayLike | None, config: ml_collections.ConfigDict):
    del class_counts
    self.gamma = float(config.focal_gamma)
    self.alpha = 1.0 if config.focal_alpha is None else float(config.focal_alpha)

  def __call__(self, logits: jax.Array, labels: jax.Array | np.ndarray) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    log_pt = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    if self.gamma == 0:
      return -self.alpha * log_pt
    modulator = jnp.maximum(-jnp.expm1(log_pt), self.tiny) ** self.gamma  # (1 - p_t)^gamma, accurately.
    return -self.alpha * modulator * log_pt


@CLASS_LOSSES.register("logit_adjusted")
class LogitAdjusted:
  needs_counts = True

  def __init__(self, class_counts: ArrayLike, config: ml_collections.ConfigDict):
    self.offsets = config.logit_adjust_tau * log_prior(class_counts)

  def __call__(self, logits: jax.Array, labels: jax.Array | np.ndarray) -> jax.Array:
    adjusted = logits + jnp.asarray(self.offsets, jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(adjusted, labels)
