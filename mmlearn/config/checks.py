"""Config validation before anything runs: unknown keys, wrong types and impossible values.

`config_flags` already rejects unknown keys and ill-typed values given on the command line; these checks
catch the same mistakes made inside config files (which may add keys freely), by comparing the config
against `mmlearn/config/schema.py` (the reference schema), and catch values whose type is right but whose
meaning is not.
"""

import math
from typing import Any

import ml_collections

from mmlearn import optim, parallel, registry
from mmlearn.config import schema as defaults
from mmlearn.data import imbalance, missing
from mmlearn.data.augment import Augment
from mmlearn.errors import ConfigError
from mmlearn.losses import classification as class_losses
from mmlearn.losses import contrastive as losses
from mmlearn.models.decoders import DECODERS
from mmlearn.models.encoders import ENCODERS
from mmlearn.models.fusion import FUSIONS
from mmlearn.runs import init_from

# Sub-trees whose keys are the user's to choose: modality names (the encoders, the missing rates, the
# MVAE's decoders and likelihood weights), fusion arguments and the dataset builder's options.
FREE_FORM = (
  "dataset.options",
  "model.modalities",
  "model.fusion_kwargs",
  "missing.train_rates",
  "missing.test_rates",
  "mvae.decoders",
  "mvae.likelihood_weights",
  "mvae.private_dims",
  "evals",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, ml_collections.ConfigDict | dict) and not prefix.startswith(FREE_FORM):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out
  return {prefix: tree}


def _type_ok(value: Any, reference: Any) -> bool:
  if reference is None or value is None:
    return True
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) == isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, int | float)
  if isinstance(reference, tuple | list):
    return isinstance(value, tuple | list)
  return isinstance(value, type(reference))


def check_keys_and_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  ref = _flatten(reference)
  for key, value in _flatten(config).items():
    if key not in ref:
      raise ConfigError(f"unknown config key {key!r}")
    if not _type_ok(value, ref[key]):
      raise ConfigError(
        f"config key {key!r} should be {type(ref[key]).__name__}, got {type(value).__name__} {value!r}"
      )


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` with a one-line message naming the first problem found.

  Imports `config.imports` first: the names checked below may be registered by those modules.
  """
  check_keys_and_types(config, defaults.get_config())
  registry.import_modules(config.imports)
  for key in (
    "batch_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "retrieval.embed_dim",
    "retrieval.query_chunk",
  ):
    if config[key] <= 0:
      raise ConfigError(f"config key {key!r} must be positive, got {config[key]}")
  learning_rate = config.optimizer.learning_rate
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise ConfigError(f"optimizer.learning_rate must be finite and positive, got {learning_rate}")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs or num_train_steps to a positive value")
  parallel.check_config(config)
  optim.OPTIMIZERS.get(config.optimizer.name)
  if config.init_from.params and not config.init_from.workdir:
    raise ConfigError("init_from.params is set but init_from.workdir names no run to take them from")
  init_from.parse_pairs(config.init_from.params)
  if config.optimizer.frozen:
    optim.frozen_labels(config.optimizer.frozen)  # Raises on a pattern that does not compile.
  FUSIONS.get(config.model.fusion)
  losses.LOSSES.get(config.retrieval.loss)
  imbalance.check(config.dataset.imbalance_ratio, config.dataset.sampler)
  Augment.from_config(config.augment)  # Raises on negative or out-of-range strengths.
  class_losses.check_config(config.classification)
  check_missing(config)
  check_core(config)
  check_eval_every_steps(config)
  check_mvae(config)
  if not config.model.modalities:
    raise ConfigError("config.model.modalities is empty: configure at least one modality")
  for modality, encoder in config.model.modalities.items():
    if "encoder" not in encoder:
      raise ConfigError(f"config.model.modalities.{modality} names no 'encoder'")
    ENCODERS.get(encoder["encoder"])


def check_missing(config: ml_collections.ConfigDict) -> None:
  """Rates in [0, 1) for modalities the model has; missing modalities are a classification option."""
  settings = config.missing
  if settings.imputation not in missing.IMPUTATIONS:
    raise ConfigError(
      f"unknown missing.imputation {settings.imputation!r}; known: {', '.join(missing.IMPUTATIONS)}"
    )
  if not 0 <= settings.modality_dropout < 1:
    raise ConfigError(f"missing.modality_dropout must be in [0, 1), got {settings.modality_dropout}")
  used = settings.modality_dropout > 0
  for which in ("train_rates", "test_rates"):
    for modality, rate in settings[which].items():
      if not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ConfigError(f"missing.{which}.{modality} must be a rate in [0, 1), got {rate!r}")
      if rate > 0 and modality not in config.model.modalities:
        raise ConfigError(f"missing.{which}.{modality}: the model has no modality {modality!r}")
      used |= rate > 0
  if used and config.task != "classification":
    raise ConfigError(f"missing modalities are a classification option; task is {config.task!r}")


PRECISIONS = ("float32", "bfloat16")


def check_core(config: ml_collections.ConfigDict) -> None:
  """Precision, EMA, evaluator entries and the parallel layout."""
  if config.precision not in PRECISIONS:
    raise ConfigError(f"unknown precision {config.precision!r}; known: {', '.join(PRECISIONS)}")
  if not 0 <= config.ema_decay < 1:
    raise ConfigError(f"ema_decay must be in [0, 1) (0: no moving average), got {config.ema_decay}")
  if config.microbatch_size < 0:
    raise ConfigError(
      f"microbatch_size must be >= 0 (0: no gradient accumulation), got {config.microbatch_size}"
    )
  for name, entry in config.evals.items():
    if not isinstance(entry, ml_collections.ConfigDict | dict):
      raise ConfigError(f"config.evals.{name} must be a dict with 'type' and 'split', got {entry!r}")
  if config.select_metric and "/" not in config.select_metric:
    raise ConfigError(
      f"select_metric must name a split's metric, e.g. 'validation/accuracy'; got {config.select_metric!r}"
    )


def check_eval_every_steps(config: ml_collections.ConfigDict) -> None:
  if config.eval_every_steps < 0:
    raise ConfigError(
      f"eval_every_steps must be >= 0 (0: evaluate at the end only), got {config.eval_every_steps}"
    )


def check_mvae(config: ml_collections.ConfigDict) -> None:
  """`config.mvae`: sizes and weights in range; for task "mvae", a decoder and a weight per modality."""
  settings = config.mvae
  if settings.latent_dim <= 0:
    raise ConfigError(f"mvae.latent_dim must be positive, got {settings.latent_dim}")
  for key in ("kl_anneal_steps", "beta", "temperature", "grid_conditions", "grid_samples"):
    if settings[key] < 0:
      raise ConfigError(f"mvae.{key} must be >= 0, got {settings[key]}")
  for modality, weight in settings.likelihood_weights.items():
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
      raise ConfigError(f"mvae.likelihood_weights.{modality} must be a number >= 0, got {weight!r}")
  for modality, width in settings.private_dims.items():
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
      raise ConfigError(f"mvae.private_dims.{modality} must be an integer >= 0, got {width!r}")
  if config.task != "mvae":
    return
  if not (settings.joint_elbo or settings.unimodal_elbos):
    raise ConfigError("mvae.joint_elbo and mvae.unimodal_elbos are both off: the MVAE has nothing to train")
  for modality in config.model.modalities:
    decoder = settings.decoders.get(modality)
    if decoder is None or "decoder" not in decoder:
      raise ConfigError(
        f"config.mvae.decoders.{modality} names no 'decoder' (known: {', '.join(DECODERS.names())})"
      )
    DECODERS.get(decoder["decoder"])
    if modality not in settings.likelihood_weights:
      raise ConfigError(f"config.mvae.likelihood_weights has no weight for modality {modality!r}")
