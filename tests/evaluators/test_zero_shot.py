"""The zero-shot evaluator: CLIP's prompt ensembling, a perfect and a shuffled embedder, its option checks."""

import re

import numpy as np
import pytest
import stub_embedder
from stub_embedder import CLASSNAMES, VARIABLES, OneHotEmbedder

from mmlearn.errors import ConfigError
from mmlearn.evaluators import registry, zero_shot
from mmlearn.metrics.classification import top_k_accuracy

TEMPLATES = ("a {} shape", "there is a {}")


def evaluate(source, **options) -> dict:
  spec = registry.EvalSpec("zs", "zero_shot", "test", 0, {"templates": TEMPLATES, **options})
  evaluator = registry.build(spec, OneHotEmbedder(), stub_embedder.context(), source)
  return dict(evaluator.run(VARIABLES))


def test_class_embeddings_average_normalised_prompts_then_renormalise():
  prompts = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0], [3.0, 4.0]], np.float32)  # 2 classes x 2 templates.
  classes = zero_shot.class_embeddings(prompts, 2)
  np.testing.assert_allclose(classes, [[np.sqrt(0.5), np.sqrt(0.5)], [0.6, 0.8]], rtol=1e-6)


def test_top_k_counts_ties_against_the_true_class():
  scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.1, 0.2, 0.3]])
  labels = np.array([0, 1, 0])
  assert top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)  # Row 1's tie is a miss.
  assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
  assert top_k_accuracy(np.zeros((4, 3)), np.zeros(4, int), 1) == 0.0


def test_an_embedder_whose_images_match_their_prompts_scores_one():
  labels = np.arange(200) % len(CLASSNAMES)
  metrics = evaluate(stub_embedder.split(labels, len(CLASSNAMES), noise=0.1, seed=0), classnames=CLASSNAMES)
  assert metrics == {"test/zero_shot/top1": 1.0, "test/zero_shot/top5": 1.0}


def test_shuffled_labels_score_chance():
  labels = np.arange(800) % len(CLASSNAMES)
  shuffled = np.random.default_rng(1).permutation(labels)
  source = stub_embedder.split(shuffled, len(CLASSNAMES), noise=0.1, seed=0)
  for example, label in zip(source, labels, strict=True):
    example["label"] = np.int64(label)  # Images of one class, labelled with another at random.
  metrics = evaluate(source, classnames=CLASSNAMES)
  assert metrics["test/zero_shot/top1"] == pytest.approx(1 / 8, abs=0.05)
  assert metrics["test/zero_shot/top5"] == pytest.approx(5 / 8, abs=0.07)


def test_class_names_default_to_the_datasets_with_spaces_and_top5_needs_five_classes():
  labels = np.arange(40) % 4
  source = stub_embedder.split(labels, 4, noise=0.1, seed=0)
  context = stub_embedder.context(label_names={"label": ("red", "green", "blue", "yellow")})
  task = OneHotEmbedder(CLASSNAMES[:4])
  evaluator = zero_shot.build(task, context, source, split="val", templates=TEMPLATES)
  assert dict(evaluator.run(VARIABLES)) == {"val/zero_shot/top1": 1.0}
  context = stub_embedder.context(label_names={"label": ("red_circle",)})
  evaluator = zero_shot.build(OneHotEmbedder(), context, source, split="val", templates=TEMPLATES)
  assert evaluator.classnames == ("red circle",)


@pytest.mark.parametrize(
  ("options", "message"),
  [
    ({"templates": ("a photo",)}, "template 'a photo' must hold the class name's place as '{}'"),
    ({"templates": ("a {} {}",)}, "template 'a {} {}' must hold"),
    ({"templates": ()}, "templates must be a non-empty tuple"),
    ({"image": "audio"}, "image='audio' is not a modality of this task; it has image, text"),
    ({"text": "caption"}, "text='caption' is not a modality of this task"),
    ({"text": "image"}, "image and text name the same modality"),
    ({"classnames": ()}, "dataset 'stub' has no class names for feature 'label'; give classnames"),
    ({"classnames": ("red", "purple")}, "unknown word 'purple'"),
  ],
)
def test_options_are_checked_when_built_in_one_line(options, message):
  options = {"templates": TEMPLATES, "classnames": CLASSNAMES, **options}
  with pytest.raises(Exception, match=re.escape(message)) as error:
    zero_shot.build(OneHotEmbedder(), stub_embedder.context(), [], split="test", **options)
  assert "\n" not in str(error.value)
  assert isinstance(error.value, ConfigError) or "unknown word" in message  # A word is the data's error.


def test_labels_outside_the_classes_are_named():
  source = stub_embedder.split(np.array([0, 1]), len(CLASSNAMES), noise=0.0, seed=0)
  source[1]["label"] = np.int64(9)
  options = {"classnames": CLASSNAMES, "templates": TEMPLATES}
  evaluator = zero_shot.build(OneHotEmbedder(), stub_embedder.context(), source, split="test", **options)
  with pytest.raises(ConfigError, match="class indices outside 0..7"):
    dict(evaluator.run(VARIABLES))


@pytest.mark.e2e  # Trains a few steps and fits the probe: about 25 s on 2 cores.
def test_a_tiny_retrieval_run_reports_zero_shot_and_probe_metrics(retrieval_tiny_data, tmp_path):
  from configs.retrieval import tiny
  from mmlearn.train import loop

  config = tiny.get_config()
  config.dataset.data_dir = retrieval_tiny_data[0]
  config.evals = {
    "zs": {"type": "zero_shot", "split": "test", "templates": ("a {}", "there is a {}")},
    "probe": {"type": "linear_probe", "split": "test", "steps": 20, "l2": (1e-3, 1.0)},
  }
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  for name in ("zero_shot/top1", "zero_shot/top5", "linear_probe/top1", "linear_probe/val_top1"):
    assert 0 <= results[f"test/{name}"] <= 1, name
  assert results["test/linear_probe/l2"] in (1e-3, 1.0)
  assert results["test/linear_probe/top1"] > 1 / 16  # Untrained-ish towers still beat chance of 16 labels.
