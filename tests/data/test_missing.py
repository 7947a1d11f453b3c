"""Missing modalities: presence masks, input imputation (generative too), and their config checks.

Fusions and the classifier under a presence mask are tested with the fusions (tests/models/test_fusion.py).
"""

import jax
import numpy as np
import pytest

from configs import default
from mmlearn.config import checks as config_checks
from mmlearn.config import schema
from mmlearn.data import missing
from mmlearn.errors import ConfigError
from mmlearn.tasks import imputation

MODALITIES = ("audio", "image")


def realised_rates(modalities, present):
  """The share of examples missing each modality in a presence mask [B, M]."""
  return {m: float(1.0 - present[:, j].mean()) for j, m in enumerate(modalities)}


# --- Masks ------------------------------------------------------------------------------------------------


def test_train_masks_keep_a_modality_follow_the_rate_and_replay_per_step():
  rng = lambda step: np.random.default_rng([3, step])  # noqa: E731  (as the pipeline seeds batch `step`)
  rates = {"audio": 0.3, "image": 0.6}
  present = missing.train_masks(MODALITIES, rates, 0.0, batch_size=4000, rng=rng(5))
  assert present.any(axis=1).all()
  realised = realised_rates(MODALITIES, present)
  # The keep-one rule gives back the rows where both went (0.3 * 0.6 = 18%), half to each modality.
  assert realised["audio"] == pytest.approx(0.3 - 0.09, abs=0.03)
  assert realised["image"] == pytest.approx(0.6 - 0.09, abs=0.03)
  again = missing.train_masks(MODALITIES, rates, 0.0, batch_size=4000, rng=rng(5))
  np.testing.assert_array_equal(present, again)
  other = missing.train_masks(MODALITIES, rates, 0.0, batch_size=4000, rng=rng(6))
  assert (present != other).any()


def test_modality_dropout_drops_one_modality_never_the_last():
  present = missing.train_masks(("a", "b", "c"), {}, 0.5, batch_size=2000, rng=np.random.default_rng(0))
  counts = present.sum(axis=1)
  assert set(np.unique(counts)) == {2, 3}
  assert (counts == 2).mean() == pytest.approx(0.5, abs=0.04)
  one = missing.train_masks(("a",), {}, 0.9, batch_size=100, rng=np.random.default_rng(0))
  assert one.all()


def test_eval_masks_are_nested_across_rates_and_independent_of_batching():
  indices = np.arange(3000)
  masks = [missing.eval_masks(MODALITIES, {"audio": r}, indices=indices, seed=1) for r in (0.1, 0.2, 0.5)]
  for lower, higher in zip(masks, masks[1:], strict=False):
    assert (higher <= lower).all()  # Missing at a lower rate -> missing at every higher rate.
  assert realised_rates(MODALITIES, masks[1])["audio"] == pytest.approx(0.2, abs=0.025)
  assert masks[1][:, 1].all()
  split = np.concatenate(
    [missing.eval_masks(MODALITIES, {"audio": 0.2}, indices=i, seed=1) for i in (indices[:7], indices[7:])]
  )
  np.testing.assert_array_equal(split, masks[1])
  both = missing.eval_masks(MODALITIES, {"audio": 0.9, "image": 0.9}, indices=indices, seed=1)
  assert both.any(axis=1).all()


# --- Imputation --------------------------------------------------------------------------------------------


def batch_of_three():
  rng = np.random.default_rng(0)
  return {
    "audio": rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32),
    "text": np.array([[3, 4, 0], [5, 0, 0], [6, 7, 8]], np.int32),
    "text_mask": np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool),
    "label": np.array([0, 1, 2], np.int32),
  }


def test_zero_imputation_clears_absent_inputs_only():
  batch = batch_of_three()
  present = np.array([[True, False], [False, True], [True, True]])
  out = missing.impute(batch, present, ("audio", "text"), imputation="zero")
  np.testing.assert_array_equal(out["audio_present"], [True, False, True])
  np.testing.assert_array_equal(out["text_present"], [False, True, True])
  assert (out["audio"][1] == 0).all()
  np.testing.assert_array_equal(out["audio"][[0, 2]], batch["audio"][[0, 2]])
  np.testing.assert_array_equal(out["text_mask"][0], [False, False, False])  # An absent caption is empty.
  np.testing.assert_array_equal(out["text_mask"][1:], batch["text_mask"][1:])
  np.testing.assert_array_equal(out["label"], batch["label"])
  assert (batch["audio"][1] != 0).all()  # The caller's batch is not modified.


def test_mean_imputation_fills_the_training_mean():
  batch = batch_of_three()
  means = {"audio": np.full((4, 4, 1), 0.25, np.float32)}
  present = np.array([[False], [True], [False]])
  out = missing.impute(batch, present, ("audio",), imputation="mean", means=means)
  assert (out["audio"][[0, 2]] == 0.25).all()
  np.testing.assert_array_equal(out["audio"][1], batch["audio"][1])


def test_imputation_errors_name_the_problem():
  present = np.ones((3, 1), bool)
  with pytest.raises(ConfigError, match="unknown imputation 'median'"):
    missing.impute(batch_of_three(), present, ("audio",), imputation="median")
  with pytest.raises(ConfigError, match="mean imputation needs array inputs; text"):
    missing.check_imputable(("audio", "text"), "mean")


def test_input_means_average_a_seeded_sample():
  data = np.arange(10_000, dtype=np.float32).reshape(10_000, 1)
  gather = lambda idx: {"x": data[idx]}  # noqa: E731
  means = missing.input_means(gather, 10_000, ("x",), seed=0)
  assert means["x"].shape == (1,) and means["x"][0] == pytest.approx(4999.5, rel=0.03)
  np.testing.assert_array_equal(means["x"], missing.input_means(gather, 10_000, ("x",), seed=0)["x"])


# --- Config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda c: c.missing.update(imputation="median"), "unknown missing.imputation 'median'"),
    (
      lambda c: c.missing.train_rates.update(image=1.0),
      r"missing.train_rates.image must be a rate in \[0, 1\)",
    ),
    (lambda c: c.missing.test_rates.update(audio=0.2), "the model has no modality 'audio'"),
    (lambda c: c.missing.update(modality_dropout=-0.1), "missing.modality_dropout must be in"),
    (
      lambda c: c.update(task="retrieval", retrieval=schema.task_sections("retrieval")["retrieval"]),
      "belongs to task 'classification', and config.task is 'retrieval'",
    ),
  ],
)
def test_bad_missing_settings_name_the_problem(change, message):
  config = default.get_config()
  config.missing.test_rates = {"image": 0.0, "text": 0.0, "audio": 0.0}
  change(config)
  with pytest.raises(ValueError, match=message):
    config_checks.check(config)


# --- Generative imputation ------------------------------------------------------------------------------


def test_generative_imputation_fills_absent_inputs_from_the_generator():
  batch = batch_of_three()
  present = np.array([[True], [False], [True]])
  seen = {}

  def generate(inputs, flags, seed):
    seen.update(flags=flags, seed=seed)
    return {"audio": np.where(flags["audio"][:, None, None, None], inputs["audio"], 7.0)}

  out = missing.impute(
    batch, present, ("audio",), imputation="generative", generate=generate, rng=np.random.default_rng(0)
  )
  np.testing.assert_array_equal(seen["flags"]["audio"], [True, False, True])
  assert (out["audio"][1] == 7.0).all()
  np.testing.assert_array_equal(out["audio"][[0, 2]], batch["audio"][[0, 2]])
  assert "audio_present" not in out  # A generated input counts as present.
  with pytest.raises(ConfigError, match="generative_workdir"):
    missing.impute(batch, present, ("audio",), imputation="generative")


def test_the_generator_samples_only_the_rows_that_lack_a_modality():
  traced = []

  class Doubler:  # A stand-in generator: an absent input becomes twice its value, and the row's key is kept.
    def impute(self, variables, batch, present, keys, temperature, targets):
      traced.append(batch["audio"].shape[0])
      doubled = jax.numpy.where(present["audio"][:, None], batch["audio"], 2 * batch["audio"])
      return {"audio": doubled, "image": jax.random.key_data(keys).astype("float32")[:, :1]}

  generate = imputation.generator(Doubler(), None, ("audio", "image"), 1.0)
  audio = np.arange(200, dtype=np.float32)[:, None]
  present = {"audio": np.ones(200, bool), "image": np.ones(200, bool)}
  assert generate({"audio": audio, "image": audio}, present, 0)["audio"] is audio  # Nothing lacking.
  present["audio"][[5, 70, 199]] = False
  out = generate({"audio": audio, "image": np.zeros((200, 1), np.float32)}, present, 0)
  assert traced == [imputation.ROWS]  # Three rows, padded to one block, not the batch of 200.
  np.testing.assert_array_equal(out["audio"][[5, 70, 199], 0], [10, 140, 398])
  np.testing.assert_array_equal(np.delete(out["audio"], [5, 70, 199]), np.delete(audio, [5, 70, 199]))
  keys = jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(np.array([5, 70])))
  np.testing.assert_array_equal(out["image"][[5, 70], 0], keys[:, 0].astype(np.float32))  # Row i's own key.


@pytest.mark.e2e
def test_generative_imputation_with_a_trained_mvae_end_to_end(mvae_tiny_run, retrieval_tiny_data, tmp_path):
  from configs import tiny
  from mmlearn.train import loop

  config = tiny.get_config()
  config.dataset.data_dir = retrieval_tiny_data[0]
  config.dataset.config = "retrieval_tiny"  # The MVAE's build: the same inputs.
  config.missing.update(imputation="generative", generative_workdir=str(mvae_tiny_run[0]))
  config.missing.train_rates.image = 0.5
  config.missing.test_rates.text = 0.5
  results = loop.train_and_evaluate(config, str(tmp_path / "classifier"))
  assert 0 <= results["test/accuracy"] <= 1

  config.missing.generative_workdir = str(tmp_path / "classifier")
  with pytest.raises(ValueError, match="is a 'classification' run, not an 'mvae' run"):
    loop.train_and_evaluate(config, str(tmp_path / "classifier2"))
