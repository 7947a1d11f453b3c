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
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from mmlearn.errors import ConfigError
from mmlearn.models.config import check_arguments, freeze_config, resolve_modalities, split_encoder_config
from mmlearn.models.fusion import FUSIONS, outputs_logits


def resolve_fusion(
  fusion: str, fusion_kwargs: Mapping[str, Any], *, num_classes: int, head_hidden: Sequence[int]
) -> tuple[type[nn.Module], dict[str, Any]]:
  """The registered fusion class and its checked kwargs, completed from the classifier if it outputs logits.

  A logits fusion gets the classifier's `num_classes` and `head_hidden`, so a config switching between
  early and late fusion changes only `fusion`. The classifier owns those numbers: setting them in
  `fusion_kwargs` as well is an error rather than a silent override.
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
  return fusion_class, kwargs


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
  """

  modalities: Mapping[str, Mapping[str, Any]]
  num_classes: int
  fusion: str = "concat"
  fusion_kwargs: Mapping[str, Any] = FrozenDict()
  head_hidden: Sequence[int] = ()
  learned_missing: bool = False

  def __post_init__(self):
    # Freeze plain dicts/lists given by callers: jit and Linen hash modules, and a dict is unhashable.
    for field in ("modalities", "fusion_kwargs", "head_hidden"):
      object.__setattr__(self, field, freeze_config(getattr(self, field)))
    super().__post_init__()

  @nn.compact
  def __call__(self, batch: Mapping[str, jnp.ndarray], *, train: bool = False) -> jnp.ndarray:
    """Maps a batch with one input per configured modality to logits [B, num_classes]."""
    if not self.modalities:
      raise ConfigError("Classifier has no modalities configured")
    features, present = [], []
    for modality in sorted(self.modalities):
      encoder_class, kwargs = split_encoder_config(modality, self.modalities[modality])
      if modality not in batch:
        raise ConfigError(f"batch has no input for modality {modality!r}; batch keys: {sorted(batch)}")
      encoder = encoder_class(**kwargs, name=f"{modality}_encoder")
      encoded = encoder(batch[modality], batch.get(f"{modality}_mask"), train=train)
      is_present = batch.get(f"{modality}_present", jnp.ones(encoded.shape[0], bool))
      if self.learned_missing:
        missing = self.param(f"{modality}_missing", nn.initializers.zeros, encoded.shape[1:])
        encoded = jnp.where(is_present[:, None], encoded, missing)
      features.append(encoded)
      present.append(is_present)

    fusion_class, fusion_kwargs = resolve_fusion(
      self.fusion, self.fusion_kwargs, num_classes=self.num_classes, head_hidden=self.head_hidden
    )
    fusion = fusion_class(**fusion_kwargs, name="fusion")
    x = fusion(features, present=jnp.stack(present, axis=1), train=train)
    if outputs_logits(fusion_class):
      return x

    for i, width in enumerate(self.head_hidden):
      x = nn.relu(nn.Dense(width, name=f"head{i}")(x))
    return nn.Dense(self.num_classes, name="logits")(x)


def build_classifier(
  model_config: Any, *, num_classes: int, vocab_size: int | None, learned_missing: bool = False
) -> Classifier:
  """Builds a `Classifier` from `config.model` (a ConfigDict or dict) and the dataset's sizes.

  Text encoders get the dataset's vocab_size (`resolve_modalities`). Config mistakes raise here.
  """
  config = freeze_config(model_config)
  modalities = resolve_modalities(config.get("modalities"), vocab_size)

  fusion = config.get("fusion", "concat")
  fusion_kwargs = config.get("fusion_kwargs") or {}
  head_hidden = tuple(config.get("head_hidden", ()))
  resolve_fusion(fusion, fusion_kwargs, num_classes=num_classes, head_hidden=head_hidden)
  return Classifier(
    modalities=modalities,
    num_classes=num_classes,
    fusion=fusion,
    fusion_kwargs=fusion_kwargs,
    head_hidden=head_hidden,
    learned_missing=learned_missing,
  )
