"""Tasks bundle a model and its loss, so one training loop serves them all (`contract`, `registry`)."""

import ml_collections
import tensorflow_datasets as tfds

from mmlearn import data, pretrained  # noqa: F401  (pretrained: registers the towers as encoders)
from mmlearn.data.pipeline import Source
from mmlearn.tasks import classification, flow, mvae, retrieval  # noqa: F401  (register themselves)
from mmlearn.tasks.contract import RunLoader, Task
from mmlearn.tasks.registry import TASKS

__all__ = ["TASKS", "build"]


def build(
  config: ml_collections.ConfigDict,
  *,
  info: tfds.core.DatasetInfo | None,
  train_source: Source | None,
  load_run: RunLoader | None = None,
) -> Task:
  """The run's task (`config.task`), with the vocabulary size of its dataset's tokenizer (None: no text).

  `train_source` is the training split (classification counts its classes and averages its inputs
  only where the config asks for it); `load_run` reads other runs back (generative imputation).
  """
  tokenizer = data.dataset_tokenizer(config.dataset)
  vocab_size = None if tokenizer is None else tokenizer.vocab_size
  return TASKS.get(config.task)(
    config, info=info, vocab_size=vocab_size, train_source=train_source, load_run=load_run
  )
