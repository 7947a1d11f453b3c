"""CLIP and SigLIP losses against direct numpy formulas, their initial temperatures, and the scale clamp."""

import math

import jax
import numpy as np
import pytest

from mmlearn.losses.contrastive import LOSSES


def unit_rows(rng, n, d):
  x = rng.standard_normal((n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_clip(a, b, log_scale):
  logits = min(math.exp(log_scale), 100.0) * (a.astype(np.float64) @ b.T.astype(np.float64))

  def cross_entropy(rows):  # Row i's correct column is i.
    top = rows.max(1, keepdims=True)
    log_norm = np.log(np.exp(rows - top).sum(1)) + top[:, 0]
    return np.mean(log_norm - np.diag(rows))

  return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def numpy_siglip(a, b, log_scale, bias):
  logits = math.exp(log_scale) * (a.astype(np.float64) @ b.T.astype(np.float64)) + bias
  labels = 2 * np.eye(len(a)) - 1
  return -np.sum(np.log(1 / (1 + np.exp(-labels * logits)))) / len(a)


def test_initial_temperatures_and_bias():
  assert LOSSES.get("clip").log_scale_init == pytest.approx(math.log(1 / 0.07))
  assert LOSSES.get("clip").bias_init is None
  assert LOSSES.get("siglip").log_scale_init == pytest.approx(math.log(10))
  assert LOSSES.get("siglip").bias_init == -10.0


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 0.0, 3.0])
def test_clip_is_symmetric_infonce(log_scale):
  rng = np.random.default_rng(0)
  a, b = unit_rows(rng, 8, 5), unit_rows(rng, 8, 5)
  loss, metrics = LOSSES.get("clip")()(a, b, log_scale=np.float32(log_scale))
  assert float(loss) == pytest.approx(numpy_clip(a, b, log_scale), rel=1e-5)
  assert float(metrics["logit_scale"]) == pytest.approx(math.exp(log_scale), rel=1e-6)
  swapped, _ = LOSSES.get("clip")()(b, a, log_scale=np.float32(log_scale))
  assert float(swapped) == pytest.approx(float(loss), rel=1e-6)


def test_clip_scale_is_clamped_at_100():
  rng = np.random.default_rng(1)
  a, b = unit_rows(rng, 6, 4), unit_rows(rng, 6, 4)
  clip = LOSSES.get("clip")()
  log_scale = np.float32(math.log(1000.0))
  loss, metrics = clip(a, b, log_scale=log_scale)
  assert float(metrics["logit_scale"]) == 100.0
  assert float(loss) == pytest.approx(numpy_clip(a, b, math.log(100.0)), rel=1e-5)
  grad = jax.grad(lambda t: clip(a, b, log_scale=t)[0])(log_scale)
  assert float(grad) == 0.0  # Above the clamp the temperature gets no gradient.
  assert float(jax.grad(lambda t: clip(a, b, log_scale=t)[0])(np.float32(1.0))) != 0.0


@pytest.mark.parametrize("log_scale, bias", [(math.log(10), -10.0), (1.0, 0.5)])
def test_siglip_is_the_pairwise_sigmoid_loss(log_scale, bias):
  rng = np.random.default_rng(2)
  a, b = unit_rows(rng, 8, 5), unit_rows(rng, 8, 5)
  loss, metrics = LOSSES.get("siglip")()(a, b, log_scale=np.float32(log_scale), bias=np.float32(bias))
  assert float(loss) == pytest.approx(numpy_siglip(a, b, log_scale, bias), rel=1e-5)
  assert float(metrics["logit_bias"]) == pytest.approx(bias)


def test_siglip_needs_a_bias():
  a = np.eye(2, dtype=np.float32)
  with pytest.raises(ValueError, match="needs a learned bias"):
    LOSSES.get("siglip")()(a, a, log_scale=np.float32(1.0))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_matched_pairs_score_lower_than_shuffled_ones(name):
  rng = np.random.default_rng(3)
  a = unit_rows(rng, 16, 8)
  loss_fn = LOSSES.get(name)()
  kwargs = {"log_scale": np.float32(loss_fn.log_scale_init), "bias": np.float32(loss_fn.bias_init or 0.0)}
  matched, metrics = loss_fn(a, a, **kwargs)
  shuffled, _ = loss_fn(a, a[::-1], **kwargs)
  assert float(matched) < float(shuffled)
  assert float(metrics["batch_accuracy"]) == 1.0
