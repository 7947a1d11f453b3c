"""Confusion-matrix metrics by hand, the task's eval sums against brute force, and the matrix's PNG."""

import json
import math
import os

import jax
import numpy as np
import pytest

from configs import tiny
from mmlearn import data
from mmlearn.evaluators import classification as classification_evaluator
from mmlearn.launch import report
from mmlearn.losses import classification as class_losses
from mmlearn.metrics import classification as cm
from mmlearn.metrics import images
from mmlearn.runs.metric_writer import MetricWriter, confusion_png_name, scalars
from mmlearn.tasks import TASKS

# Rows: true class, columns: predicted. Class 2 is absent from the split but predicted once.
CONFUSION = np.array(
  [
    [3, 1, 0, 0],
    [1, 2, 1, 0],
    [0, 0, 0, 0],
    [0, 2, 0, 2],
  ],
  np.float64,
)


def test_metrics_by_hand():
  np.testing.assert_allclose(cm.recall(CONFUSION), [3 / 4, 2 / 4, np.nan, 2 / 4])
  # F1 = 2TP / (2TP + FP + FN): class 0: 6 / (6 + 1 + 1); class 1: 4 / (4 + 3 + 2); class 3: 4 / (4 + 0 + 2).
  np.testing.assert_allclose(cm.f1(CONFUSION), [6 / 8, 4 / 9, np.nan, 4 / 6])
  assert cm.accuracy(CONFUSION) == pytest.approx(7 / 12)
  assert cm.balanced_accuracy(CONFUSION) == pytest.approx((3 / 4 + 2 / 4 + 2 / 4) / 3)
  assert cm.macro_f1(CONFUSION) == pytest.approx((6 / 8 + 4 / 9 + 4 / 6) / 3)


def test_a_present_class_never_predicted_has_f1_0():
  confusion = np.array([[2.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(cm.f1(confusion), [4 / 5, 0.0])
  assert cm.balanced_accuracy(confusion) == pytest.approx(0.5)


def test_an_empty_split_gives_nan_without_warnings():
  empty = np.zeros((3, 3))
  with np.errstate(all="raise"):
    assert math.isnan(cm.accuracy(empty))
    assert math.isnan(cm.balanced_accuracy(empty))
    assert math.isnan(cm.macro_f1(empty))


def test_numpy_sees_the_confusion_matrix_as_its_counts():
  matrix = cm.ConfusionMatrix(CONFUSION, ("a", "b", "c", "d"))
  assert np.ndim(matrix) == 2
  np.testing.assert_array_equal(np.asarray(matrix), CONFUSION)


@pytest.fixture(scope="module")
def task_and_params():
  config = tiny.get_config()
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  params = task.init(jax.random.PRNGKey(0), make_batch(np.random.default_rng(0), 2))
  return task, params


def make_batch(rng, size, padding=0):
  return {
    "image": rng.random((size, 32, 32, 3)).astype(np.float32),
    "text": rng.integers(1, 20, (size, 16)).astype(np.int32),
    "text_mask": np.ones((size, 16), bool),
    "label": rng.integers(0, 16, size).astype(np.int32),
    "weight": np.r_[np.ones(size - padding), np.zeros(padding)].astype(np.float32),
  }


def test_eval_sums_and_summarize_match_brute_force(task_and_params):
  """The classification evaluator's per-batch sums of the task's logits, and the metrics from them."""
  task, params = task_and_params
  batch = make_batch(np.random.default_rng(1), 64, padding=5)
  sums = jax.jit(lambda p, b: classification_evaluator.eval_sums(task.logits(p, b), b, 16))(params, batch)
  metrics = classification_evaluator.summarize(jax.device_get(sums), task.class_names)

  logits = np.asarray(task.logits(params, batch), np.float64)
  real = batch["weight"] > 0
  labels, predictions = batch["label"][real], logits[real].argmax(1)
  log_probs = logits[real] - np.log(np.exp(logits[real]).sum(1, keepdims=True))
  assert metrics["loss"] == pytest.approx(-log_probs[np.arange(len(labels)), labels].mean(), rel=1e-5)
  assert metrics["accuracy"] == pytest.approx(np.mean(labels == predictions))
  recalls, f1s = {}, {}
  for c in range(16):
    if not (labels == c).any():
      assert math.isnan(metrics[f"class_recall/{c}"])
      continue
    tp = np.sum((labels == c) & (predictions == c))
    recalls[c] = tp / np.sum(labels == c)
    f1s[c] = 2 * tp / (np.sum(labels == c) + np.sum(predictions == c))
    assert metrics[f"class_recall/{c}"] == pytest.approx(recalls[c])
  assert metrics["balanced_accuracy"] == pytest.approx(np.mean(list(recalls.values())))
  assert metrics["macro_f1"] == pytest.approx(np.mean(list(f1s.values())))
  counts = metrics["confusion_matrix"].counts
  assert counts.sum() == 59 and metrics["confusion_matrix"].class_names == tuple(map(str, range(16)))
  for t, p in zip(labels, predictions, strict=True):
    counts[t, p] -= 1
  assert not counts.any()


def test_the_training_loss_is_the_configured_class_loss(task_and_params):
  _, params = task_and_params
  config = tiny.get_config()
  config.classification.loss = "inverse_frequency"
  counts = np.arange(1, 17)
  with pytest.raises(ValueError, match="'inverse_frequency' needs the training split's class counts"):
    TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  with pytest.raises(ValueError, match="class_counts has shape"):
    TASKS.get("classification")(
      config, num_classes=16, vocab_size=data.vocab_size("mmshapes"), class_counts=counts[:3]
    )
  task = TASKS.get("classification")(
    config, num_classes=16, vocab_size=data.vocab_size("mmshapes"), class_counts=counts
  )
  batch = make_batch(np.random.default_rng(2), 8)
  loss, metrics, _ = task.loss(params, batch, jax.random.PRNGKey(0))
  logits = task.logits(params, batch)  # The classifier has no dropout: same logits.
  weights = class_losses.inverse_frequency_weights(counts)[batch["label"]]
  ce = np.asarray(class_losses.CLASS_LOSSES.get("cross_entropy")(None, None)(logits, batch["label"]))
  assert float(loss) == pytest.approx(np.mean(weights * ce), rel=1e-5)
  assert float(metrics["loss"]) == float(loss)


def test_writer_draws_the_matrix_and_keeps_it_out_of_json(tmp_path):
  writer = MetricWriter(str(tmp_path))
  matrix = cm.ConfusionMatrix(CONFUSION, ("circle", "square", "star", "triangle"))
  writer.write(7, {"test/accuracy": 0.5, "test/confusion_matrix": matrix})
  with pytest.raises(TypeError, match="'test/other' is not a scalar, ConfusionMatrix or Image"):
    writer.write(8, {"test/other": np.zeros(3)})
  writer.close()
  assert confusion_png_name("test/confusion_matrix") == "confusion_test.png"
  assert (tmp_path / "confusion_test.png").stat().st_size > 0
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 7, "test/accuracy": 0.5}]
  events = [os.path.getsize(tmp_path / "tensorboard" / f) for f in os.listdir(tmp_path / "tensorboard")]
  assert max(events) > 10_000  # The image, not only the one scalar.


def test_scalars_drops_the_matrix_and_converts_to_float():
  matrix = cm.ConfusionMatrix(CONFUSION, ("a", "b", "c", "d"))
  values = scalars({"a": np.float32(0.25), "n": 3, "m": matrix})
  assert values == {"a": 0.25, "n": 3.0} and all(type(v) is float for v in values.values())


def test_confusion_chart_returns_the_picture(tmp_path):
  picture = images.confusion_chart(str(tmp_path / "c.png"), CONFUSION, list("abcd"), title="t")
  assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
  assert (tmp_path / "c.png").stat().st_size > 0


def test_recall_and_f1_are_shown_as_percentages():
  assert report.format_metric("test/class_recall/star", 0.5) == "50.00%"
  assert report.format_metric("test/macro_f1", 0.25) == "25.00%"
  assert report.format_metric("test/loss", 0.25) == "0.25"


def test_the_reported_test_metric_mirrors_the_validation_one():
  assert report.test_counterpart("validation/accuracy") == "test/accuracy"
  assert report.test_counterpart("best/validation/accuracy") == "best/test/accuracy"
  assert report.test_counterpart("best/validation/class_recall/validation") == (
    "best/test/class_recall/validation"
  )
  assert report.test_counterpart("train/loss") == "train/loss"
