"""Multimodal classification: encoders per modality -> fusion -> MLP head, a loss from
`losses.classification`.

A `Task` and a `Classifier` (`mmlearn.tasks.contract`). It owns two config sections:
`classification` (the training loss, the fusion and head, class imbalance of the training split) and
`missing` (modalities missing in training or evaluation, and how they are imputed). Its data hook
(`training_data`) gives the pipeline the long-tailed subset, the sampler and the missing-modality masks;
evaluation batches miss modalities at the test rates (`missing.evaluate()`, read by the classification
and robustness evaluators). Generative imputation reads a trained generator run through the run loader
the task is given.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import config_dict

from mmlearn.data import imbalance
from mmlearn.data import missing as missing_data
from mmlearn.data.pipeline import Source, TrainingData
from mmlearn.losses import classification as class_losses
from mmlearn.models.classifier import build_classifier
from mmlearn.models.config import compute_dtype
from mmlearn.models.fusion import FUSIONS
from mmlearn.tasks import imputation
from mmlearn.tasks.contract import (
  Batch,
  Classifier,
  RunLoader,
  Variables,
  apply_for_training,
)
from mmlearn.tasks.registry import register

# Keys of the `classification` section that describe the model after the encoders.
MODEL_KEYS = ("fusion", "fusion_kwargs", "head_hidden", "head_dropout")


@register("classification")
class ClassificationTask:
  """Classes come from the dataset's `label` feature (`info`), or explicitly from `num_classes`.

  The training split's class counts are read only by losses that weight or shift classes
  (`config.classification.loss`): from `train_source` (its long-tailed subset), or given as
  `class_counts` ([C] or a function returning it).
  """

  summary_metric = "accuracy"
  separable_loss = True
  default_evaluators = ("classification",)

  @staticmethod
  def config_sections() -> dict[str, ml_collections.ConfigDict]:
    """`classification` and `missing`, with their defaults."""
    settings = ml_collections.ConfigDict()
    # The training loss (mmlearn/losses/classification.py); losses that weight or shift classes take the
    # training split's class counts from the dataset.
    # cross_entropy | inverse_frequency | class_balanced | focal | logit_adjusted
    settings.loss = "cross_entropy"
    settings.class_balanced_beta = 0.999  # class_balanced: in [0, 1); 0 = uniform weights.
    settings.focal_gamma = 2.0  # focal: 0 = cross-entropy.
    settings.focal_alpha = 0.25  # focal: one weight for every class; None = 1.
    settings.logit_adjust_tau = 1.0  # logit_adjusted: logits + tau * log(class prior).
    # The model after the encoders (mmlearn/models/classifier.py): a registered fusion, its arguments, and
    # the MLP head's hidden widths and dropout.
    settings.fusion = "concat"
    settings.fusion_kwargs = ml_collections.ConfigDict()
    settings.head_hidden = (64,)
    settings.head_dropout = 0.0  # Dropout on the head's hidden layers while training.
    # Class imbalance of the training split (mmlearn/data/imbalance.py). A ratio > 1 keeps a seeded
    # long-tailed subset: class c keeps n_min * ratio^(-c/(C-1)) examples, n_min the rarest class's count.
    settings.imbalance_ratio = 1.0  # 1 = the whole split.
    settings.imbalance_seed = 0
    settings.sampler = "uniform"  # uniform (shuffled epochs) | class_balanced (every class equally often)

    # Missing modalities (mmlearn/data/missing.py): per-example presence masks drawn in the pipeline, at a
    # rate per modality (a rate for a modality the model lacks must stay 0).
    absent = ml_collections.ConfigDict()
    absent.train_rates = ml_collections.ConfigDict({"image": 0.0, "text": 0.0})
    absent.test_rates = ml_collections.ConfigDict({"image": 0.0, "text": 0.0})  # Every eval split.
    absent.modality_dropout = 0.0  # P(a training example loses one of its modalities, never the last).
    absent.imputation = "zero"  # zero | mean | learned | generative: what an absent modality gets.
    absent.generative_workdir = config_dict.placeholder(str)  # generative: a trained `mvae` or `flow` run.
    absent.generative_temperature = 1.0  # generative: the generator's sampling temperature.
    absent.seed = 0  # Of the evaluation masks (and the sample `mean` averages).
    return {"classification": settings, "missing": absent}

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """The loss and its settings, the fusion, the imbalance settings and the missing-modality rates."""
    settings = config.classification
    class_losses.check_config(settings)
    FUSIONS.get(settings.fusion)
    imbalance.check(settings.imbalance_ratio, settings.sampler)
    missing_data.check_config(config.missing, tuple(config.model.modalities))

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: tfds.core.DatasetInfo | None = None,
    vocab_size: int | None = None,
    train_source: Source | None = None,
    load_run: RunLoader | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    class_counts: np.ndarray | Callable[[], np.ndarray] | None = None,
  ):
    if num_classes is None:
      if info is None:
        raise ValueError("classification needs the dataset info or num_classes")
      label = info.features["label"]
      label_classes: int = label.num_classes
      num_classes, class_names = label_classes, class_names or list(label.names)
    self.num_classes = num_classes
    self.class_names: Sequence[str] = class_names or [str(i) for i in range(num_classes)]
    self.config, self.train_source, self.load_run = config, train_source, load_run
    self._missing: missing_data.MissingModalities | None = None
    settings = config.classification
    self.model = build_classifier(
      {"modalities": config.model.modalities, **{key: settings[key] for key in MODEL_KEYS}},
      num_classes=num_classes,
      vocab_size=vocab_size,
      learned_missing=config.missing.imputation == "learned",
      dtype=compute_dtype(config.precision),
    )
    self.training = TrainingData(
      imbalance_ratio=settings.imbalance_ratio,
      imbalance_seed=settings.imbalance_seed,
      sampler=settings.sampler,
    )

    def counts() -> np.ndarray | None:
      resolved = class_counts() if callable(class_counts) else class_counts
      if resolved is None and train_source is not None:
        resolved = self.training_class_counts()
      if resolved is not None and np.shape(resolved) != (num_classes,):
        raise ValueError(f"class_counts has shape {np.shape(resolved)}, expected ({num_classes},)")
      return resolved

    self.class_loss = class_losses.build(settings, counts)

  def training_class_counts(self) -> np.ndarray:
    """Examples per class of the training set the pipeline draws from (the long-tailed subset)."""
    if self.train_source is None:
      raise ValueError("the training split's class counts need the task built with train_source")
    return imbalance.class_counts(
      self.train_source,
      self.num_classes,
      imbalance_ratio=self.training.imbalance_ratio,
      imbalance_seed=self.training.imbalance_seed,
    )

  @property
  def missing(self) -> missing_data.MissingModalities:
    """`config.missing` for the model's modalities: the training masks and the evaluation transform.

    Built on first use, once: the `mean` imputation averages the training split, and `generative` loads
    the generator run.
    """
    if self._missing is None:
      self._missing = self._missing_modalities()
    return self._missing

  def _missing_modalities(self) -> missing_data.MissingModalities:
    settings = self.config.missing
    modalities = tuple(self.config.model.modalities)
    generate = None
    if settings.imputation == "generative":
      if self.load_run is None:
        raise ValueError("generative imputation needs the task built with load_run (a run loader)")
      generate = imputation.load_generator(
        self.load_run, settings.generative_workdir, modalities, settings.generative_temperature
      )
    return missing_data.from_config(
      settings,
      modalities,
      max_tokens=self.config.dataset.max_tokens,
      train_source=self.train_source,
      generate=generate,
    )

  def training_data(self) -> TrainingData:
    """The long-tailed subset and sampler of `config.classification`, and the missing-modality masks."""
    return dataclasses.replace(self.training, transforms=(self.missing,))

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.model.init(rng, batch, train=False))

  def logits(self, variables: Variables, batch: Batch) -> jax.Array:
    """Evaluation-mode logits (running BatchNorm statistics, no dropout)."""
    # flax types `apply`'s result as the output or (output, collections); without `mutable`, the output.
    return cast(jax.Array, self.model.apply(variables, batch, train=False))

  def loss(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    del rng, step  # The classifier's randomness is dropout alone; it has no schedules.
    logits, updated = apply_for_training(self.model, variables, batch, dropout_rng=dropout_rng)
    loss = self.class_loss(logits, batch["label"]).mean()
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}, updated


if TYPE_CHECKING:  # The capability this task claims, checked by the type checker (not at run time).
  _CLAIMS: type[Classifier] = ClassificationTask
