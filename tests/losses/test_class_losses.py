"""Class-imbalance losses against direct numpy formulas, their weight normalisations and special cases."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from mmlearn.errors import ConfigError
from mmlearn.losses import classification as class_losses
from mmlearn.losses.classification import CLASS_LOSSES

COUNTS = np.array([50, 5, 0, 20, 1])  # Class 2 is absent from the "training split".


def loss_config(name, **overrides):
  config = ml_collections.ConfigDict(default.get_config().classification.to_dict())
  config.loss = name
  config.update(overrides)
  return config


def inputs(seed=0, batch=12, num_classes=5):
  rng = np.random.default_rng(seed)
  logits = (3 * rng.standard_normal((batch, num_classes))).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return logits, labels


def numpy_log_softmax(logits):
  x = logits.astype(np.float64)
  top = x.max(1, keepdims=True)
  return x - top - np.log(np.exp(x - top).sum(1, keepdims=True))


def numpy_ce(logits, labels):
  return -numpy_log_softmax(logits)[np.arange(len(labels)), labels]


def run(name, counts=COUNTS, **overrides):
  logits, labels = inputs()
  loss = class_losses.build(loss_config(name, **overrides), counts)
  return np.asarray(loss(logits, labels), np.float64), logits, labels


def test_cross_entropy_equals_optax():
  losses, logits, labels = run("cross_entropy", counts=None)
  assert losses.shape == (12,)
  np.testing.assert_allclose(
    losses, optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6
  )
  np.testing.assert_allclose(losses, numpy_ce(logits, labels), rtol=1e-5)


def test_inverse_frequency_weights_and_loss():
  n = np.array([50, 5, 1, 20, 1], np.float64)  # The zero count clamped to 1.
  expected_weights = n.sum() / (5 * n)
  weights = class_losses.inverse_frequency_weights(COUNTS)
  np.testing.assert_allclose(weights, expected_weights)
  assert np.sum(weights * n) / n.sum() == pytest.approx(1.0)  # Keeps cross-entropy's scale.
  losses, logits, labels = run("inverse_frequency")
  np.testing.assert_allclose(losses, expected_weights[labels] * numpy_ce(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999])
def test_class_balanced_weights_and_loss(beta):
  n = np.array([50, 5, 1, 20, 1], np.float64)
  raw = (1 - beta) / (1 - beta**n)
  expected_weights = raw / raw.sum() * 5
  weights = class_losses.class_balanced_weights(COUNTS, beta)
  np.testing.assert_allclose(weights, expected_weights)
  assert weights.sum() == pytest.approx(5.0)
  if beta == 0.0:
    np.testing.assert_allclose(weights, np.ones(5))
  losses, logits, labels = run("class_balanced", class_balanced_beta=beta)
  np.testing.assert_allclose(losses, expected_weights[labels] * numpy_ce(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, None), (1.0, 1.0)])
def test_focal_is_the_modulated_cross_entropy(gamma, alpha):
  losses, logits, labels = run("focal", counts=None, focal_gamma=gamma, focal_alpha=alpha)
  log_pt = numpy_log_softmax(logits)[np.arange(len(labels)), labels]
  expected = -(1.0 if alpha is None else alpha) * (1 - np.exp(log_pt)) ** gamma * log_pt
  np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-7)


def test_focal_with_gamma_0_and_no_alpha_is_cross_entropy():
  losses, logits, labels = run("focal", focal_gamma=0.0, focal_alpha=None)
  np.testing.assert_allclose(losses, numpy_ce(logits, labels), rtol=1e-5)


def test_focal_gradient_is_finite_on_confident_examples():
  loss = class_losses.build(loss_config("focal", focal_gamma=0.5))
  logits = np.array([[100.0, 0.0, 0.0], [0.0, 1.0, 2.0]], np.float32)  # Row 0: p_t == 1 in float32.
  grads = jax.grad(lambda x: loss(x, np.array([0, 2])).sum())(logits)
  assert np.isfinite(np.asarray(grads)).all()


def test_logit_adjusted_adds_tau_log_prior():
  tau = 0.7
  losses, logits, labels = run("logit_adjusted", logit_adjust_tau=tau)
  n = np.array([50, 5, 1, 20, 1], np.float64)
  np.testing.assert_allclose(losses, numpy_ce(logits + tau * np.log(n / n.sum()), labels), rtol=1e-5)


def test_logit_adjusted_with_uniform_counts_is_cross_entropy():
  losses, logits, labels = run("logit_adjusted", counts=np.full(5, 7))
  np.testing.assert_allclose(losses, numpy_ce(logits, labels), rtol=1e-5)


@pytest.mark.parametrize("name", ["inverse_frequency", "class_balanced", "logit_adjusted"])
def test_zero_counts_give_finite_losses(name):
  losses, _, _ = run(name, counts=np.zeros(5, np.int64))
  assert np.isfinite(losses).all()


@pytest.mark.parametrize("name", ["inverse_frequency", "class_balanced", "logit_adjusted"])
def test_losses_that_need_counts_say_so(name):
  with pytest.raises(
    ValueError, match=f"classification loss '{name}' needs the training split's class counts"
  ):
    class_losses.build(loss_config(name), None)


def test_unknown_loss_names_itself_and_the_known_ones():
  with pytest.raises(ConfigError, match="unknown classification loss 'focla'") as error:
    class_losses.build(loss_config("focla"), COUNTS)
  for name in CLASS_LOSSES.names():
    assert name in str(error.value)
  assert set(CLASS_LOSSES.names()) == {
    "cross_entropy",
    "inverse_frequency",
    "class_balanced",
    "focal",
    "logit_adjusted",
  }


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("class_balanced_beta", 1.0, "class_balanced_beta must be in"),
    ("focal_gamma", -1.0, "focal_gamma must be >= 0"),
    ("focal_alpha", 0.0, "focal_alpha must be positive or None"),
  ],
)
def test_config_checks_reject_out_of_range_values(key, value, message):
  from mmlearn.config import checks as config_checks

  config = default.get_config()
  config.classification[key] = value
  with pytest.raises(ValueError, match=message):
    config_checks.check(config)


def test_config_checks_reject_an_unknown_loss():
  from mmlearn.config import checks as config_checks

  config = default.get_config()
  config.classification.loss = "nope"
  with pytest.raises(ValueError, match="unknown classification loss 'nope'"):
    config_checks.check(config)
