"""The multimodal VAE (MVAE, Wu & Goodman 2018): Gaussian experts per modality, multiplied into one posterior.

Each modality's encoder (a registered encoder, as the classifier's, plus two dense heads) gives a diagonal
Gaussian expert q(z | x_m) = N(mu_m, exp(logvar_m)). The posterior given any subset of modalities is the
product of their experts and the prior expert N(0, I) (`product_of_experts`), so one model infers z from
whatever is present: a modality absent for an example simply leaves its product. Each modality has a
decoder p(x_m | z) (`mmlearn.models.decoders`, which owns the likelihood).

A modality may also have a private latent w_m (`private_dims`, as in DMVAE, Lee & Pavlovic 2021): its
encoder's heads are wider, and the extra dimensions are q(w_m | x_m), inferred from x_m alone and never
multiplied with other experts; its decoder reads [z, w_m]. It holds what no other modality can tell
(where in its quadrant a shape sits), so the shared z need not, and a decoder given z from another
modality draws w_m from its prior: a sharp shape somewhere plausible rather than the blur that is the
average over every position z cannot know.

The pure functions here (`product_of_experts`, `gaussian_kl`, `reparameterize`) are the ELBO's pieces;
`mmlearn.tasks.mvae` assembles them into the sub-sampled ELBO, imputation and sampling.

`dtype` is the computation dtype of every encoder, expert head and decoder; parameters stay float32, and
the experts' (mu, logvar) and the decoders' distributions are float32, so the ELBO's pieces run in float32.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmlearn import rngs
from mmlearn.errors import ConfigError
from mmlearn.models.config import build_encoder, check_arguments, freeze_config, module_arguments, with_dtype
from mmlearn.models.decoders import DECODERS
from mmlearn.models.encoders import computation_dtype


def product_of_experts(mus: jax.Array, logvars: jax.Array, present: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The product of the present Gaussian experts and the N(0, I) prior: (mu, logvar), each [B, D].

  mus, logvars: [M, B, D], one expert per modality; present: bool [M, B]. Precisions add and the mean is
  the precision-weighted mean: T = 1 + sum_m T_m, mu = sum_m T_m mu_m / T, with T_m = exp(-logvar_m) over
  the present experts. Computed in log space (log T is a logsumexp that always includes the prior's 0),
  so an example with no expert present gets exactly the prior, and no gradient reaches absent experts.
  """
  log_precisions = jnp.where(present[..., None], -logvars, -jnp.inf)
  prior = jnp.zeros_like(log_precisions[:1])
  log_total = jax.nn.logsumexp(jnp.concatenate([prior, log_precisions]), axis=0)
  shares = jnp.exp(log_precisions - log_total)  # T_m / T; exactly 0 for absent experts.
  mu = jnp.sum(jnp.where(present[..., None], shares * mus, 0.0), axis=0)
  return mu, -log_total


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) per example [B], summed over the latent dimensions."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mu * mu - 1.0 - logvar, axis=-1)


def reparameterize(
  rng: jax.Array, mu: jax.Array, logvar: jax.Array, temperature: float | jax.Array = 1.0
) -> jax.Array:
  """z = mu + temperature * std * eps, eps ~ N(0, I); temperature scales the spread only.

  `rng` is one key for every row, or one key per row of mu (`mmlearn.rngs`: row i's eps from key i).
  """
  eps = rngs.normal(rng, mu.shape, mu.dtype)
  return mu + temperature * jnp.exp(0.5 * logvar) * eps


class GaussianEncoder(nn.Module):
  """A registered encoder's features -> dense heads -> float32 (mu, logvar), each [B, latent_dim]."""

  modality: str
  encoder: Mapping[str, Any]  # {"encoder": <registered name>, **kwargs}
  latent_dim: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    dtype = computation_dtype(self.dtype, f"encoder of modality {self.modality!r}")
    features = build_encoder(self.modality, self.encoder, dtype=dtype, name="features")(x, mask, train=train)
    heads = [
      nn.Dense(self.latent_dim, dtype=dtype, param_dtype=jnp.float32, name=n) for n in ("mu", "logvar")
    ]
    mu, logvar = (head(features).astype(jnp.float32) for head in heads)
    return mu, logvar


def resolve_decoders(
  decoders_config: Any, modalities: Any, *, vocab_size: int | None, max_tokens: int
) -> dict[str, dict[str, Any]]:
  """Checked `{modality: decoder config}` for `modalities`, completed with the dataset's sizes.

  Decoders with a `vocab_size` / `max_tokens` argument the config leaves unset get the dataset's
  (as `resolve_modalities` does for encoders). Config mistakes raise here, naming the modality.
  """
  configs = freeze_config(decoders_config or {})
  resolved = {}
  for modality in sorted(modalities):
    if modality not in configs:
      raise ConfigError(
        f"config.mvae.decoders has no decoder for modality {modality!r} (has: {', '.join(sorted(configs))})"
      )
    config = dict(configs[modality])
    if "decoder" not in config:
      raise ConfigError(
        f"config.mvae.decoders.{modality} names no 'decoder' (known: {', '.join(DECODERS.names())})"
      )
    decoder_class = DECODERS.get(config.pop("decoder"))
    accepted, _ = module_arguments(decoder_class)
    if "vocab_size" in accepted and config.get("vocab_size") is None:
      if vocab_size is None:
        raise ConfigError(f"the decoder of modality {modality!r} needs a vocab_size; the dataset has none")
      config["vocab_size"] = vocab_size
    if "max_tokens" in accepted and config.get("max_tokens") is None:
      config["max_tokens"] = max_tokens
    check_arguments(
      decoder_class, config, f"decoder {configs[modality]['decoder']!r} of modality {modality!r}"
    )
    resolved[modality] = {"decoder": configs[modality]["decoder"], **config}
  return resolved


class MVAE(nn.Module):
  """One Gaussian expert (`encoder_<m>`) and one decoder (`decoder_<m>`) per modality, sharing a latent space.

  Attributes:
    encoder_configs: modality -> `{"encoder": <registered encoder>, **kwargs}` (as `config.model.modalities`).
    decoder_configs: modality -> `{"decoder": <registered decoder>, **kwargs}` (`resolve_decoders`).
    latent_dim: width of the shared z.
    private_dims: modality -> width of its private latent w_m (absent: 0, none).
    dtype: computation dtype of the encoders and decoders (a config's own `dtype` for one of them wins).
  """

  encoder_configs: Mapping[str, Mapping[str, Any]]
  decoder_configs: Mapping[str, Mapping[str, Any]]
  latent_dim: int
  private_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for field in ("encoder_configs", "decoder_configs", "private_dims"):  # Hashable, as Classifier's configs.
      object.__setattr__(self, field, freeze_config(getattr(self, field)))
    super().__post_init__()

  def setup(self):
    dtype = computation_dtype(self.dtype, "MVAE")
    self.encoder = {
      m: GaussianEncoder(m, config, self.latent_dim + self.private_dims.get(m, 0), dtype)
      for m, config in sorted(self.encoder_configs.items())
    }
    decoders = {}
    for m, config in sorted(self.decoder_configs.items()):
      decoder_class = DECODERS.get(config["decoder"])
      kwargs = {k: v for k, v in config.items() if k != "decoder"}
      decoders[m] = decoder_class(
        **with_dtype(decoder_class, kwargs, dtype, f"the decoder of modality {m!r}")
      )
    self.decoder = decoders

  def encode(
    self, batch: Mapping[str, jax.Array], *, train: bool = False
  ) -> dict[str, tuple[jax.Array, jax.Array]]:
    """`{modality: (mu, logvar)}` for every configured modality whose input is in `batch`.

    Each is [B, latent_dim + private_dims[m]]: the shared expert, then the private posterior (the task's
    `experts` splits them). `train` switches the encoders' dropout and BatchNorm (if configured) to
    training mode.
    """
    return {
      m: self.encoder[m](batch[m], batch.get(f"{m}_mask"), train=train)
      for m in sorted(self.encoder_configs)
      if m in batch
    }

  def log_likelihood(
    self, modality: str, z: jax.Array, x: jax.Array, mask: jax.Array | None = None
  ) -> jax.Array:
    """log p(x_m | z) per example [B]; z is [shared z, w_m] for a modality with a private latent."""
    return self.decoder[modality].log_likelihood(z, x, mask)

  def generate(
    self, modality: str, z: jax.Array, rng: jax.Array, temperature: float = 1.0
  ) -> tuple[jax.Array, jax.Array | None]:
    """A sample of x_m per row of z, and its token mask (None for arrays)."""
    return self.decoder[modality].generate(z, rng, temperature)

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """Touches every expert and decoder (for `init`): log p(x_m | z) at z = the first expert's mean.

    (A private latent's part of z is zeros.)
    """
    experts = self.encode(batch, train=train)
    z = next(iter(experts.values()))[0][:, : self.latent_dim]
    out = {}
    for m in sorted(self.decoder_configs):
      padded = jnp.pad(z, ((0, 0), (0, self.private_dims.get(m, 0))))
      out[m] = self.log_likelihood(m, padded, batch[m], batch.get(f"{m}_mask"))
    return out
