"""Cross-modal retrieval: a dual encoder trained with a contrastive loss, evaluated by ranking a split.

The task pairs exactly two modalities (`config.model.modalities`, e.g. image + text, or audio + image).
Training follows the task contract of `mmlearn.tasks.classification` (`init`, `loss`); evaluation is a
`RetrievalEvaluator`, which embeds a whole split once and ranks every item of one modality against every
item of the other, both ways (`mmlearn.metrics.retrieval`).

Every split is ranked with the paired item as the only right answer (rule "pair", the headline and the
task's summary metric). `config.retrieval.relevance` adds a lenient rule beside it: feature names such as
`("shape", "colour", "size", "quadrant")` or `("label",)` count any item whose features all agree (rule
"same_shape_colour_size_quadrant", "same_label"). The rule is part of every metric name, e.g.
`test/pair/audio_to_image/R@1` and `test/same_label/audio_to_image/R@1`, so a number never travels
without its rule.
"""

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.errors import ConfigError
from mmlearn.evaluators.split_pass import SplitPass
from mmlearn.losses.contrastive import LOSSES
from mmlearn.metrics import retrieval as retrieval_metrics
from mmlearn.models.config import compute_dtype, resolve_modalities
from mmlearn.models.dual_encoder import DualEncoder
from mmlearn.tasks.contract import apply_for_training
from mmlearn.tasks.registry import TASKS

RANDOM_BASELINE_SEED = 0


@TASKS.register("retrieval")
class RetrievalTask:
  separable_loss = False  # In-batch negatives: a chunk would see fewer of them.
  evaluator_types = ("retrieval",)  # Registered evaluators (mmlearn.evaluators.registry) that apply.
  default_evaluators = ("retrieval",)

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: Any = None,
    vocab_size: int | None = None,
    class_counts: np.ndarray | None = None,
  ):
    del class_counts  # Pairs have no classes to weight.
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
      dtype=compute_dtype(config.get("precision", "float32")),
    )
    self.relevance = tuple(settings.relevance)
    if info is not None:
      missing = [name for name in self.relevance if name not in info.features]
      if missing:
        raise ConfigError(
          f"config.retrieval.relevance names feature(s) {missing} the dataset lacks; "
          f"known: {', '.join(info.features.keys())}"
        )
    self.query_chunk = settings.query_chunk
    self.random_baseline = settings.random_baseline
    logging.info(
      "retrieval: train/batch_accuracy counts only the paired item as right, so it looks low when a batch "
      "holds items with the same description (e.g. duplicate captions); evaluation reports the paired "
      "rule and, with config.retrieval.relevance, the same-description rule beside it"
    )

  @property
  def summary_metric(self) -> str:
    a, b = self.modalities
    return f"pair/{a}_to_{b}/R@1"

  @property
  def relevance_rule(self) -> str:
    return "same_" + "_".join(self.relevance) if self.relevance else "pair"

  def _check_batch(self, batch: dict[str, Any]) -> None:
    for modality in self.modalities:
      if modality not in batch:
        raise ConfigError(f"batch has no input for modality {modality!r}; batch keys: {sorted(batch)}")

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    self._check_batch(batch)
    return dict(self.model.init(rng, batch, train=False))

  def embed(self, variables: dict[str, Any], batch: dict[str, Any]) -> dict[str, jax.Array]:
    """Unit-norm evaluation-mode embeddings of the modalities present in `batch`."""
    return self.model.apply(variables, batch, train=False)

  def loss(
    self,
    variables: dict[str, Any],
    batch: dict[str, Any],
    rng: jax.Array,
    *,
    step: Any = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """Per-device contrastive loss of this device's pairs against the global batch (see mmlearn.losses.contrastive)."""
    del rng, step  # Dropout is the only randomness; no schedules.
    self._check_batch(batch)
    embeddings, updated = apply_for_training(self.model, variables, batch, dropout_rng=dropout_rng)
    a, b = self.modalities
    params = variables["params"]
    loss, metrics = self.loss_fn(
      embeddings[a],
      embeddings[b],
      log_scale=params["log_scale"],
      bias=params.get("bias"),
      axis_name=parallel_lib.AXIS,
    )
    return loss, metrics, updated

  def relevance_keys(self, source: Any) -> np.ndarray:
    """One id per example of `source`; examples are relevant to each other when their ids are equal."""
    if not self.relevance:
      return np.arange(len(source))
    examples = [source[i] for i in range(len(source))]
    return retrieval_metrics.description_keys([np.stack([ex[f] for ex in examples]) for f in self.relevance])

  def evaluator(self, par: parallel_lib.DataParallel, source: Any, **kwargs: Any) -> "RetrievalEvaluator":
    return RetrievalEvaluator(self, par, source, **kwargs)


def embed_step(
  variables: dict[str, Any], batch: dict[str, Any], *, task: RetrievalTask
) -> dict[str, jax.Array]:
  """Per-device: this device's embeddings, all-gathered into the global batch (the same on every device)."""
  out = {m: e for m, e in task.embed(variables, batch).items() if m in task.modalities}
  out |= {"weight": batch["weight"], "index": batch["index"]}
  return jax.tree.map(lambda x: lax.all_gather(x, parallel_lib.AXIS, tiled=True), out)


class RetrievalEvaluator(SplitPass):
  """Embeds a whole split once, then reports R@1/5/10, median rank and mAP both ways."""

  per_device_step = staticmethod(embed_step)

  def embed_split(self, variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """`{modality: [N, D]}` for every example of the split, in source order, padding dropped.

    Each process reads its share `source[process::count]` (see `pipeline.eval_batches`); every row is
    tagged with its source index before sharding, and the gathered indices must be exactly 0..N-1.
    """
    count, process = jax.process_count(), jax.process_index()
    local_batch = self.batch_size // count
    parts = []
    for b, batch in enumerate(self.batches()):
      position = b * local_batch + np.arange(local_batch)
      batch["index"] = np.where(batch["weight"] > 0, process + count * position, -1).astype(np.int32)
      parts.append(jax.device_get(self._step(variables, self.par.shard(batch))))
    gathered = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    real = gathered["weight"] > 0
    order = np.argsort(gathered["index"][real])
    if not np.array_equal(gathered["index"][real][order], np.arange(len(self.source))):
      raise RuntimeError(f"embedding {self.split} did not see every example exactly once")
    return {m: gathered[m][real][order] for m in self.task.modalities}

  def run(self, variables: dict[str, Any]):
    """The paired item is the headline rule; a `retrieval.relevance` adds its lenient rule beside it."""
    embeddings = self.embed_split(variables)
    rules = {"pair": np.arange(len(self.source))}
    if self.task.relevance:
      description = self.task.relevance_keys(self.source)
      rules[self.task.relevance_rule] = description
    logging.info("retrieval on %s (%d items): rules %s", self.split, len(self.source), ", ".join(rules))
    noise = None
    if self.task.random_baseline:  # Embeddings uniform on the sphere: the chance level of each rule.
      rng = np.random.default_rng(RANDOM_BASELINE_SEED)
      noise = {m: rng.standard_normal(e.shape).astype(np.float32) for m, e in embeddings.items()}
      noise = {m: x / np.linalg.norm(x, axis=1, keepdims=True) for m, x in noise.items()}
    for rule, keys in rules.items():
      yield from self._directions(embeddings, keys, f"{self.split}/{rule}")
      if noise is not None:
        yield from self._directions(noise, keys, f"{self.split}/{rule}/random")
    if self.task.relevance:  # What the paired rule allows when a pair is known only by its description.
      a, b = self.task.modalities
      for name, value in retrieval_metrics.pair_ceiling(description, description).items():
        for query, target in ((a, b), (b, a)):
          yield f"{self.split}/pair/ceiling/{query}_to_{target}/{name}", value

  def _directions(self, embeddings: dict[str, np.ndarray], keys: np.ndarray, prefix: str):
    a, b = self.task.modalities
    for query, target in ((a, b), (b, a)):
      metrics = retrieval_metrics.retrieval_metrics(
        embeddings[query], embeddings[target], keys, keys, chunk=self.task.query_chunk
      )
      for name, value in metrics.items():
        yield f"{prefix}/{query}_to_{target}/{name}", value
