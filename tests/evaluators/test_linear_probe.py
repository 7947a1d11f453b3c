"""The linear probe: the L-BFGS fit, the penalty validation chooses, the evaluator on a stub, its checks."""

import re

import ml_collections
import numpy as np
import pytest
import stub_embedder
from stub_embedder import VARIABLES, OneHotEmbedder

from mmlearn.errors import ConfigError
from mmlearn.evaluators import linear_probe, registry


def blobs(n: int, seed: int, *, noise_dims: int = 0, signal: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
  """Two classes apart by `2 * signal` along dimension 0, plus `noise_dims` dimensions of pure noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = rng.standard_normal((n, 1 + noise_dims)).astype(np.float32)
  x[:, 0] += signal * (2 * y - 1)
  return x, y


def test_the_fit_lowers_the_objective_and_separates_separable_classes():
  rng = np.random.default_rng(0)
  centres = 4 * rng.standard_normal((4, 6))
  y = rng.integers(0, 4, 300)
  x = (centres[y] + rng.standard_normal((300, 6))).astype(np.float32)
  params, values = linear_probe.fit(x, y, 1e-4, num_classes=4, steps=50)
  values = np.asarray(values)
  assert values[0] == pytest.approx(np.log(4), rel=1e-5)  # From zero weights: uniform predictions.
  assert np.all(np.diff(values) <= 1e-6) and values[-1] < 0.05
  assert (linear_probe.scores(params, x).argmax(1) == y).mean() == 1.0
  again, _ = linear_probe.fit(x, y, 1e-4, num_classes=4, steps=50)
  np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(again["w"]))  # Deterministic.


def test_validation_chooses_the_penalty_and_a_tie_goes_to_the_larger():
  train, val = blobs(200, 0, signal=6.0), blobs(200, 1, signal=6.0)  # Separable.
  l2, top1, _ = linear_probe.select(train, val, linear_probe.L2_GRID, num_classes=2, steps=50)

  def val_top1(penalty: float) -> float:
    params, _ = linear_probe.fit(*train, penalty, num_classes=2, steps=50)
    return float((linear_probe.scores(params, val[0]).argmax(1) == val[1]).mean())

  assert top1 == 1.0 and l2 == max(v for v in linear_probe.L2_GRID if val_top1(v) == 1.0)


def test_noisy_features_choose_a_larger_penalty_than_the_smallest():
  # 24 training examples, one weak signal dimension and 48 of noise: a weak penalty fits the noise.
  (x_train, y_train), (x_val, y_val) = (
    blobs(24, 0, noise_dims=48, signal=1.0),
    blobs(400, 1, noise_dims=48, signal=1.0),
  )
  features = linear_probe.standardise({"train": x_train, "val": x_val}, "train")
  train, val = (features["train"], y_train), (features["val"], y_val)
  l2, top1, _ = linear_probe.select(train, val, linear_probe.L2_GRID, num_classes=2, steps=100)
  weakest, _ = linear_probe.fit(*train, min(linear_probe.L2_GRID), num_classes=2, steps=100)
  weakest_top1 = (linear_probe.scores(weakest, val[0]).argmax(1) == val[1]).mean()
  assert l2 >= 1e-2 and top1 > weakest_top1 + 0.02, (l2, top1, weakest_top1)


def probe_sources(noise: float) -> dict:
  sizes = {"train": 160, "validation": 80, "test": 80}
  return {
    name: stub_embedder.split(np.arange(n) % 8, 8, noise=noise, seed=seed)
    for seed, (name, n) in enumerate(sizes.items())
  }


def test_the_evaluator_reports_the_test_split_once_for_the_chosen_penalty():
  sources = probe_sources(noise=0.1)
  context = stub_embedder.context(sources, label_names={"label": tuple("abcdefgh")})
  spec = registry.EvalSpec("probe", "linear_probe", "test", 0, {"steps": 30, "l2": (1e-4, 1e-2, 1.0)})
  metrics = dict(registry.build(spec, OneHotEmbedder(), context, sources["test"]).run(VARIABLES))
  assert sorted(metrics) == ["test/linear_probe/l2", "test/linear_probe/top1", "test/linear_probe/val_top1"]
  assert metrics["test/linear_probe/top1"] == 1.0 and metrics["test/linear_probe/val_top1"] == 1.0
  assert metrics["test/linear_probe/l2"] in (1e-4, 1e-2, 1.0)


def test_the_probe_reads_its_other_splits_with_the_data():
  config = ml_collections.ConfigDict(
    {
      "evals": {
        "probe": {"type": "linear_probe", "split": "test"},
        "other": {
          "type": "linear_probe",
          "split": "holdout",
          "val_split": "test",
          "train_split": "train[:50%]",
        },
        "typo": {"type": "nope", "split": "x"},
      },
      "dataset": {"eval_splits": ("validation",)},
    }
  )
  splits = registry.configured_splits(config)
  assert (
    sorted(splits) == ["holdout", "test", "train", "train[:50%]", "validation", "x"] and len(set(splits)) == 6
  )


@pytest.mark.parametrize(
  ("options", "message"),
  [
    (
      {"split": "validation"},
      "split, train_split and val_split must differ (got 'validation', 'train', 'validation')",
    ),
    ({"split": "test", "train_split": "test"}, "split, train_split and val_split must differ"),
    ({"modality": "audio"}, "modality='audio' is not a modality of this task; it has image, text"),
    ({"l2": ()}, "l2 must be a non-empty tuple of penalties >= 0, got ()"),
    ({"l2": (1.0, -1.0)}, "l2 must be a non-empty tuple of penalties >= 0"),
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"val_split": "dev"}, "split(s) ['dev'] are not loaded; loaded: train, validation, test"),
  ],
)
def test_options_are_checked_when_built_in_one_line(options, message):
  sources = probe_sources(noise=0.1)
  options = {"split": "test", **options}
  with pytest.raises(ConfigError, match=re.escape(message)) as error:
    linear_probe.build(OneHotEmbedder(), stub_embedder.context(sources), sources["test"], **options)
  assert "\n" not in str(error.value)
