"""The task contract: each registered task owns its config sections and has the capabilities it claims,
and evaluators apply to a task by capability (checked as protocols, not by attribute names)."""

import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmlearn.config import schema
from mmlearn.data import mmshapes
from mmlearn.evaluators import registry as evaluators
from mmlearn.tasks import TASKS
from mmlearn.tasks.contract import Classifier, Embedder, ExampleLosses, Generator

SECTIONS = {
  "classification": {"classification", "missing"},
  "retrieval": {"retrieval"},
  "mvae": {"mvae"},
  "flow": {"flow"},
}
CAPABILITIES = {
  "classification": {Classifier},
  "retrieval": {Embedder},
  "mvae": {Generator, ExampleLosses},
  "flow": {Generator, ExampleLosses},
}
APPLICABLE = {
  "classification": ["classification", "robustness"],
  "retrieval": ["linear_probe", "retrieval", "zero_shot"],
  "mvae": ["coherence", "loss", "samples"],
  "flow": ["coherence", "loss", "samples"],
}


def test_every_task_is_listed():
  assert TASKS.names() == sorted(SECTIONS)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_a_tasks_config_holds_the_core_and_its_own_sections_only(name):
  config = schema.get_config(name)
  assert set(TASKS.get(name).config_sections()) == SECTIONS[name]
  own = SECTIONS[name]
  others = set().union(*SECTIONS.values()) - own
  assert own <= set(config) and not others & set(config)
  assert set(config) - own == set(schema.core())  # Everything else is the core.


def build(name):
  """A task of each kind on mmshapes' `retrieval` build features (no data is read)."""
  config = schema.get_config(name)
  if name == "flow":
    config.model.modalities = {"text": config.model.modalities.text}
  features = {"image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8)}
  features["label"] = tfds.features.ClassLabel(num_classes=16)
  info = types.SimpleNamespace(features=features)
  return TASKS.get(name)(config, info=info, vocab_size=len(mmshapes.VOCABULARY))


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_a_task_has_exactly_the_capabilities_it_claims(name):
  task = build(name)
  for capability in (Classifier, Embedder, ExampleLosses, Generator):
    assert isinstance(task, capability) == (capability in CAPABILITIES[name]), capability.__name__
  assert evaluators.applicable(task) == APPLICABLE[name]
  assert set(task.default_evaluators) <= set(APPLICABLE[name])
  assert task.training_data().transforms == (() if name != "classification" else (task.missing,))
