"""Cross-modal retrieval: a dual encoder trained with a contrastive loss, evaluated by ranking a split.

A `Task` and an `Embedder` (`mmlearn.tasks.contract`). It pairs exactly two modalities
(`config.model.modalities`, e.g. image + text, or audio + image) and owns the `retrieval` config
section. The `retrieval` evaluator (`mmlearn.evaluators.retrieval`) embeds a whole split once and ranks
every item of one modality against every item of the other, both ways, with the paired item as the
right answer and, with `retrieval.relevance`, any item of the same description beside it.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import jax
import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from mmlearn import parallel as parallel_lib
from mmlearn.data.pipeline import Source, TrainingData
from mmlearn.errors import ConfigError
from mmlearn.losses.contrastive import LOSSES
from mmlearn.models.config import compute_dtype, resolve_modalities
from mmlearn.models.dual_encoder import DualEncoder
from mmlearn.tasks.contract import (
  Batch,
  ChunkedContrastive,
  Embedder,
  PyTree,
  RunLoader,
  Variables,
  apply_for_training,
)
from mmlearn.tasks.registry import register


@register("retrieval")
class RetrievalTask:
  # In-batch negatives: a chunk would see fewer of them, so `microbatch_size` caches gradients instead.
  separable_loss = False
  default_evaluators = ("retrieval",)

  @staticmethod
  def config_sections() -> dict[str, ml_collections.ConfigDict]:
    """`retrieval`, with its defaults (the dual encoder is built on config.model.modalities)."""
    settings = ml_collections.ConfigDict()
    settings.loss = "clip"  # clip | siglip (mmlearn/losses/contrastive.py)
    settings.embed_dim = 64  # Joint embedding width (each tower's projection head).
    # False: no projection head; the towers' own outputs are the joint space (pretrained CLIP/SigLIP).
    settings.projection = True
    # Features that must agree for two items to count as relevant; () = only the paired item counts.
    settings.relevance = ()
    settings.query_chunk = 512  # Queries ranked at once: a [query_chunk, N] similarity block.
    settings.random_baseline = False  # Also report the metrics of random unit embeddings.
    return {"retrieval": settings}

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    settings = config.retrieval
    LOSSES.get(settings.loss)
    for key in ("embed_dim", "query_chunk"):
      if settings[key] <= 0:
        raise ConfigError(f"config key 'retrieval.{key}' must be positive, got {settings[key]}")

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: tfds.core.DatasetInfo | None = None,
    vocab_size: int | None = None,
    train_source: Source | None = None,
    load_run: RunLoader | None = None,
  ):
    del train_source, load_run  # Pairs need no class counts and no other run.
    settings = config.retrieval
    self.loss_fn = LOSSES.get(settings.loss)()
    modalities = resolve_modalities(config.model.modalities, vocab_size)
    if len(modalities) != 2:
      raise ConfigError(
        f"retrieval pairs exactly two modalities; config.model.modalities has {sorted(modalities)}"
      )
    self.modalities = tuple(sorted(modalities))
    self.model = DualEncoder(
      modalities=modalities,
      embed_dim=settings.embed_dim,
      log_scale_init=self.loss_fn.log_scale_init,
      bias_init=self.loss_fn.bias_init,
      project=bool(settings.projection),
      dtype=compute_dtype(config.precision),
    )
    self.relevance: tuple[str, ...] = tuple(settings.relevance)
    if info is not None:
      missing = [name for name in self.relevance if name not in info.features]
      if missing:
        raise ConfigError(
          f"config.retrieval.relevance names feature(s) {missing} the dataset lacks; "
          f"known: {', '.join(info.features.keys())}"
        )
    self.query_chunk = int(settings.query_chunk)
    self.random_baseline = bool(settings.random_baseline)
    logging.info(
      "retrieval: train/batch_accuracy counts only the paired item as right, so it looks low when a batch "
      "holds items with the same description (e.g. duplicate captions); evaluation reports the paired "
      "rule and, with config.retrieval.relevance, the same-description rule beside it"
    )

  @property
  def summary_metric(self) -> str:
    a, b = self.modalities
    return f"pair/{a}_to_{b}/R@1"

  def training_data(self) -> TrainingData:
    return TrainingData()

  def _check_batch(self, batch: Batch) -> None:
    for modality in self.modalities:
      if modality not in batch:
        raise ConfigError(f"batch has no input for modality {modality!r}; batch keys: {sorted(batch)}")

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    self._check_batch(batch)
    return dict(self.model.init(rng, batch, train=False))

  def embed(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    """Unit-norm evaluation-mode embeddings of the modalities present in `batch`."""
    # flax types `apply`'s result as the output or (output, collections); without `mutable`, the output.
    return cast(dict[str, jax.Array], self.model.apply(variables, batch, train=False))

  def loss(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """Per-device contrastive loss of this device's pairs against the global batch (`losses.contrastive`)."""
    del rng, step  # Dropout is the only randomness; no schedules.
    self._check_batch(batch)
    embeddings, updated = apply_for_training(self.model, variables, batch, dropout_rng=dropout_rng)
    loss, metrics = self.embedding_loss(variables["params"], embeddings)
    return loss, metrics, updated

  # `ChunkedContrastive`: `loss` in two halves, so the trainer can cache gradients (`microbatch_size`).

  def embed_for_training(
    self, variables: Variables, batch: Batch, dropout_rng: jax.Array | None
  ) -> dict[str, jax.Array]:
    """Training-mode embeddings of both modalities (the trainer refuses chunks for models with state)."""
    self._check_batch(batch)
    embeddings, _ = apply_for_training(self.model, variables, batch, dropout_rng=dropout_rng)
    return embeddings

  def embedding_loss(
    self, params: PyTree, embeddings: Mapping[str, jax.Array]
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of this device's embeddings against the global batch's; `params` for the scale."""
    a, b = self.modalities
    return self.loss_fn(
      embeddings[a],
      embeddings[b],
      log_scale=params["log_scale"],
      bias=params.get("bias"),
      axis_name=parallel_lib.AXIS,
    )


if TYPE_CHECKING:  # The capability this task claims, checked by the type checker (not at run time).
  _CLAIMS: type[Embedder] = RetrievalTask
  _CHUNKED: type[ChunkedContrastive] = RetrievalTask
