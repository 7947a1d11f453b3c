"""The multimodal classifier: one encoder per configured modality -> fusion -> MLP head -> logits.

Which modalities exist, which encoder reads each, and how they are fused are all config, so the
image-only, text-only and multimodal models are one class, and comparing them changes no code:

    Classifier(modalities={"image": {"encoder": "cnn", "dense": 64},
                           "text": {"encoder": "lstm", "vocab_size": 40, "hidden": 64}},
               fusion="concat", head_hidden=(64,), num_classes=16)

Modality `m` reads `batch[m]` and, if present, the padding mask `batch[f"{m}_mask"]` and the presence
mask `batch[f"{m}_present"]` (bool [B]; `mmlearn.data.missing`), which goes to the fusion as `present`.
With `learned_missing`, an absent modality's features are replaced by a learned embedding of the absence
(parameter `<m>_missing`), the `learned` imputation strategy.

A fusion that outputs logits (`late`: one head per modality) takes the classifier's `num_classes` and
`head_hidden` and replaces the classifier's head, so `head_hidden` means the same thing either way.

`dtype` is the computation dtype of the whole model (`mmlearn.models.config.compute_dtype` of
`config.precision`): every encoder, the fusion and the head compute in it, parameters stay float32, and
the logits come back as float32 so that losses and metrics reduce in float32.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict
from jax.typing import DTypeLike

from mmlearn.errors import ConfigError
from mmlearn.models.config import (
  build_encoder,
  check_arguments,
  freeze_config,
  resolve_modalities,
  with_dtype,
)
from mmlearn.models.encoders import check_rate, computation_dtype, dropout
from mmlearn.models.fusion import FUSIONS, outputs_logits


def resolve_fusion(
  fusion: str,
  fusion_kwargs: Mapping[str, Any],
  *,
  num_classes: int,
  head_hidden: Sequence[int],
  dtype: DTypeLike = jnp.float32,
) -> tuple[type[nn.Module], dict[str, Any]]:
  """The registered fusion class and its checked kwargs, completed from the classifier if it outputs logits.

  A logits fusion gets the classifier's `num_classes` and `head_hidden`, so a config switching between
  early and late fusion changes only `fusion`. The classifier owns those numbers: setting them in
  `fusion_kwargs` as well is an error rather than a silent override. Every fusion gets `dtype`, unless
  `fusion_kwargs` sets its own (`with_dtype`).
  """
  fusion_class = FUSIONS.get(fusion)
  kwargs = dict(fusion_kwargs)
  if outputs_logits(fusion_class):
    clashes = sorted({"num_classes", "head_hidden"} & set(kwargs))
    if clashes:
      raise ConfigError(
        f"fusion {fusion!r} takes {', '.join(map(repr, clashes))} from the classifier; "
        "set them on the model, not in fusion_kwargs"
      )
    kwargs.update(num_classes=num_classes, head_hidden=tuple(head_hidden))
  check_arguments(fusion_class, kwargs, f"fusion {fusion!r}")
  return fusion_class, with_dtype(fusion_class, kwargs, dtype, f"fusion {fusion!r}")


class Classifier(nn.Module):
  """Encoders (one per modality, applied in sorted name order) -> fusion -> relu MLP -> logits.

  A fusion with `outputs_logits` (e.g. `late`) ends the model: it gets `num_classes` and `head_hidden`
  and builds the heads itself, and the classifier adds no `head{i}`/`logits` layers.

  Attributes:
    modalities: modality name -> encoder config, `{"encoder": <registered name>, **encoder kwargs}`.
    num_classes: number of output logits.
    fusion: registered fusion name (see `mmlearn.models.fusion`).
    fusion_kwargs: keyword arguments of the fusion module.
    head_hidden: widths of the head's hidden layers (relu); () is a linear head on the fused features.
      For a fusion that outputs logits, the widths of its per-modality heads.
    learned_missing: replace the features of absent modalities by a learned embedding per modality.
    head_dropout: dropout rate after each of the head's hidden layers when training (needs a 'dropout'
      RNG then); a rate > 0 with no hidden layer to apply it to is a config error.
    dtype: computation dtype of the encoders, fusion and head; parameters and logits are float32.
  """

  modalities: Mapping[str, Mapping[str, Any]]
  num_classes: int
  fusion: str = "concat"
  fusion_kwargs: Mapping[str, Any] = FrozenDict()
  head_hidden: Sequence[int] = ()
  learned_missing: bool = False
  head_dropout: float = 0.0
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    # Freeze plain dicts/lists given by callers: jit and Linen hash modules, and a dict is unhashable.
    for field in ("modalities", "fusion_kwargs", "head_hidden"):
      object.__setattr__(self, field, freeze_config(getattr(self, field)))
    super().__post_init__()

  @nn.compact
  def __call__(self, batch: Mapping[str, jnp.ndarray], *, train: bool = False) -> jnp.ndarray:
    """Maps a batch with one input per configured modality to float32 logits [B, num_classes]."""
    if not self.modalities:
      raise ConfigError("Classifier has no modalities configured")
    dtype = computation_dtype(self.dtype, "Classifier")
    features, present = [], []
    for modality in sorted(self.modalities):
      if modality not in batch:
        raise ConfigError(f"batch has no input for modality {modality!r}; batch keys: {sorted(batch)}")
      encoder = build_encoder(modality, self.modalities[modality], dtype=dtype, name=f"{modality}_encoder")
      encoded = encoder(batch[modality], batch.get(f"{modality}_mask"), train=train)
      is_present = batch.get(f"{modality}_present", jnp.ones(encoded.shape[0], bool))
      if self.learned_missing:
        missing = self.param(f"{modality}_missing", nn.initializers.zeros, encoded.shape[1:])
        encoded = jnp.where(is_present[:, None], encoded, missing)
      features.append(encoded)
      present.append(is_present)

    fusion_class, fusion_kwargs = resolve_fusion(
      self.fusion, self.fusion_kwargs, num_classes=self.num_classes, head_hidden=self.head_hidden, dtype=dtype
    )
    check_head_dropout(self.head_dropout, fusion_class, self.head_hidden)
    fusion = fusion_class(**fusion_kwargs, name="fusion")
    x = fusion(features, present=jnp.stack(present, axis=1), train=train)
    if outputs_logits(fusion_class):
      return x.astype(jnp.float32)

    for i, width in enumerate(self.head_hidden):
      x = nn.relu(nn.Dense(width, dtype=dtype, param_dtype=jnp.float32, name=f"head{i}")(x))
      x = dropout(self, x, self.head_dropout, train, "classifier head_dropout")
    logits = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32, name="logits")(x)
    return logits.astype(jnp.float32)


def check_head_dropout(rate: float, fusion_class: type[nn.Module], head_hidden: Sequence[int]) -> None:
  """A `ConfigError` for a rate outside [0, 1), or a rate > 0 that no hidden layer of the head would use."""
  check_rate(rate, "head_dropout", "classification")
  if rate > 0 and (outputs_logits(fusion_class) or not head_hidden):
    raise ConfigError(
      f"classification.head_dropout={rate} acts after the classifier head's hidden layers, "
      "and this model has none "
      "(head_hidden is empty or the fusion outputs logits); set it to 0.0"
    )


def build_classifier(
  model_config: Any,
  *,
  num_classes: int,
  vocab_size: int | None,
  learned_missing: bool = False,
  dtype: DTypeLike = jnp.float32,
) -> Classifier:
  """Builds a `Classifier` from a model description (a ConfigDict or dict: `modalities`, and `fusion`,
  `fusion_kwargs`, `head_hidden`, `head_dropout` where they differ from the `Classifier` defaults) and
  the dataset's sizes.

  The classification task describes its model from `config.model.modalities` and its own section.
  Text encoders get the dataset's vocab_size (`resolve_modalities`). `dtype` is the computation dtype
  (`compute_dtype(config.precision)`). Config mistakes raise here.
  """
  config = freeze_config(model_config)
  modalities = resolve_modalities(config.get("modalities"), vocab_size)

  fusion = config.get("fusion", "concat")
  fusion_kwargs = config.get("fusion_kwargs") or {}
  head_hidden = tuple(config.get("head_hidden", ()))
  head_dropout = float(config.get("head_dropout", 0.0))
  fusion_class, _ = resolve_fusion(
    fusion, fusion_kwargs, num_classes=num_classes, head_hidden=head_hidden, dtype=dtype
  )
  check_head_dropout(head_dropout, fusion_class, head_hidden)
  computation_dtype(dtype, "build_classifier")
  return Classifier(
    modalities=modalities,
    num_classes=num_classes,
    fusion=fusion,
    fusion_kwargs=fusion_kwargs,
    head_hidden=head_hidden,
    learned_missing=learned_missing,
    head_dropout=head_dropout,
    dtype=dtype,
  )
