"""The MVAE task: the multimodal VAE trained on the sub-sampled ELBO, conditional sampling and imputation.

Task `"mvae"` is a `Task`, a `Generator` and an `ExampleLosses` (`mmlearn.tasks.contract`): its
evaluators are `loss` (the test ELBO and its parts), `samples` (grids) and `coherence`. Its model is
`mmlearn.models.mvae.MVAE` on `config.model.modalities` (encoders) and `config.mvae.decoders`; it owns
the `mvae` config section.

The objective (Wu & Goodman 2018) sums ELBOs over subsets of the modalities: the joint ELBO, with the
posterior of every modality, and one per modality, with that modality's posterior alone, so every
single-modality posterior learns to stand in for the joint one (which conditional generation and
imputation need). Each subset's term is

    sum_m w_m E_q(z | x_S)[log p(x_m | z)] - beta_t KL(q(z | x_S) || N(0, I)),

one sample of z, over the modalities the subset reconstructs: its own, or every modality with
`mvae.cross_reconstruction` (any q bounds log p(x), so this is still an ELBO of all the modalities, and
it trains the single-modality posteriors at conditional generation directly). `w_m` are
`mvae.likelihood_weights`; beta_t rises linearly from 0 to `mvae.beta` over `mvae.kl_anneal_steps`.

A modality with a private latent w_m (`mvae.private_dims`, see `mmlearn.models.mvae`) is reconstructed
from [z, w_m] with w_m ~ q(w_m | x_m), its own encoder's, whichever subset gave z, and the subset's KL
gains KL(q(w_m | x_m) || N(0, I)) (still an ELBO: q may depend on any observed modality). That KL takes
the final weight beta from the first step: annealing lets the shared z become informative before its KL
bites, but a free w_m at the start would let the decoder read everything from the image's own latent
and ignore z, which conditional generation needs. Sampling and imputation draw w_m from its prior.

The KL weight depends on the step. The trainer passes `step=` to every task loss (`mmlearn.tasks.contract`),
so the schedule needs neither a copy of the step in the batch nor a guess from the RNG;
`loss(variables, batch, rng)` without a step (tools, tests) uses the final weight.

Reported (training and evaluation): `elbo`, the joint ELBO with unit weights and beta = 1 (the bound on
log p(x), in nats per example: likelihoods are probabilities of the stored data, so it is <= 0), and per
subset `<subset>/elbo`, `<subset>/kl`, `<subset>/recon_<m>` (subsets `joint`, `from_<m>`); `kl` includes
the private latents' KLs, also reported alone as `<subset>/kl_private_<m>`.

Randomness (every z and w_m sample, every sampled token) is drawn per example: `rng` is either one key
per example ([B] keys from `mmlearn.rngs`; the trainer and the evaluator pass keys folded with each
example's index in the global batch, so the loss, its gradient and the evaluation ELBO do not depend on
how many devices share the batch), or a single key for the whole batch (tools: `scripts/generate.py`,
imputation in the data pipeline), drawn as `jax.random` would.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmlearn import rngs
from mmlearn.data.pipeline import Source, TrainingData
from mmlearn.errors import ConfigError
from mmlearn.models import mvae
from mmlearn.models.config import compute_dtype, resolve_modalities
from mmlearn.models.decoders import DECODERS
from mmlearn.tasks.contract import (
  Batch,
  ExampleLosses,
  Generator,
  RunLoader,
  SampleOption,
  Variables,
  apply_method,
)
from mmlearn.tasks.registry import register


@dataclasses.dataclass(frozen=True)
class Subset:
  """One ELBO term: z from the product of `posterior`'s experts, scored on `reconstruct`."""

  name: str
  posterior: tuple[str, ...]
  reconstruct: tuple[str, ...]
  weight: float  # 1: part of the objective; 0: reported only.


def elbo_subsets(modalities: Sequence[str], *, joint: bool, unimodal: bool, cross: bool) -> list[Subset]:
  """The joint subset (always computed: it is the reported ELBO) and one per modality if `unimodal`."""
  modalities = tuple(sorted(modalities))
  subsets = [Subset("joint", modalities, modalities, float(joint))]
  if unimodal and len(modalities) > 1:
    subsets += [Subset(f"from_{m}", (m,), modalities if cross else (m,), 1.0) for m in modalities]
  return subsets


def kl_weight(step: jax.Array | int | None, beta: float, anneal_steps: int) -> jax.Array:
  """beta * min(1, step / anneal_steps); beta throughout without annealing or without a step."""
  if step is None or anneal_steps <= 0:
    return jnp.float32(beta)
  return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / anneal_steps)


@register("mvae")
class MVAETask:
  """The MVAE as a task. Beyond the contract's `Task`, `Generator` and `ExampleLosses`:

  - `posterior(variables, batch, present=None) -> (mu, logvar)`: q(z | the modalities present).
  - `sample` draws `target` given only the `condition` modalities (a tuple) of each example, with a
    token mask for a sequence target (else None); `temperature` (default `mvae.temperature`) scales the
    posterior's spread and the token softmax (0: the mean, greedy tokens). It takes no other options.
  - `array_modalities`: the modalities decoded to arrays (decoders with a `shape`), e.g. for grids;
    `sample_conditions(t)`: every other modality, then t itself (its reconstruction, the reference).
  """

  summary_metric = "elbo"
  separable_loss = True
  default_evaluators = ("loss", "samples")
  sample_options: tuple[str, ...] = ()

  @staticmethod
  def config_sections() -> dict[str, ml_collections.ConfigDict]:
    """`mvae`, with its defaults. Encoders are config.model.modalities; decoders and likelihood weights
    are keyed by modality, like them."""
    settings = ml_collections.ConfigDict()
    settings.latent_dim = 32
    settings.decoders = ml_collections.ConfigDict(
      {
        # deconv: discretized-Gaussian levels of `shape` (H, W divisible by 2 ** len(widths)), std fixed
        # or learned ("learn_std": True); "translate": True reads a 2-wide private latent as a shift.
        # See mmlearn/models/decoders.py.
        "image": {"decoder": "deconv", "shape": (32, 32, 3), "widths": (64, 32), "std": 0.1},
        "text": {"decoder": "lstm", "embed_dim": 32, "hidden": 128},  # vocab_size, max_tokens: the dataset's.
        "audio": {"decoder": "deconv", "shape": (112, 112, 1), "widths": (64, 32, 16, 8), "std": 0.1},
      }
    )
    settings.likelihood_weights = ml_collections.ConfigDict({"image": 1.0, "text": 1.0, "audio": 1.0})
    # Width of each modality's private latent, read by its decoder only (0: none; see mmlearn/models/mvae.py).
    settings.private_dims = ml_collections.ConfigDict({"image": 0, "text": 0, "audio": 0})
    settings.beta = 1.0  # Final KL weight (1: the ELBO).
    settings.kl_anneal_steps = 0  # Linear KL warm-up from 0 to beta over this many steps; 0: off.
    settings.joint_elbo = True  # Train on the joint ELBO (always reported as `elbo`).
    settings.unimodal_elbos = True  # Also on each single modality's ELBO (MVAE's sub-sampling).
    settings.cross_reconstruction = False  # Single-modality posteriors also reconstruct the others.
    settings.temperature = 1.0  # Sample grids' (and generate.py's default) posterior temperature.
    settings.grid_conditions = 8  # Sample grids: rows (the split's first examples) ...
    settings.grid_samples = 4  # ... and samples per row; 0 disables the grids.
    return {"mvae": settings}

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """Sizes and weights in range; a decoder and a likelihood weight for every modality."""
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

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    info: tfds.core.DatasetInfo | None = None,
    vocab_size: int | None = None,
    train_source: Source | None = None,
    load_run: RunLoader | None = None,
  ):
    del train_source, load_run  # Generation weights no classes and reads no other run.
    settings = config.mvae
    encoders = resolve_modalities(config.model.modalities, vocab_size)
    self.modalities = tuple(sorted(encoders))
    self.decoders = mvae.resolve_decoders(
      settings.decoders, self.modalities, vocab_size=vocab_size, max_tokens=config.dataset.max_tokens
    )
    features = info.features if info is not None else {}
    for m, decoder in self.decoders.items():
      stored = getattr(features[m], "shape", None) if m in features else None
      if "shape" in decoder and stored is not None and tuple(decoder["shape"]) != tuple(stored):
        raise ConfigError(
          f"config.mvae.decoders.{m}.shape is {tuple(decoder['shape'])}, the dataset's {m} is {tuple(stored)}"
        )
    self.latent_dim = int(settings.latent_dim)
    self.private_dims = {m: int(settings.private_dims.get(m, 0)) for m in self.modalities}
    for m, decoder in self.decoders.items():
      if decoder.get("translate") and self.private_dims[m] != 2:
        raise ConfigError(
          f"config.mvae.decoders.{m}.translate reads a 2-wide private latent (dx, dy); "
          f"config.mvae.private_dims.{m} is {self.private_dims[m]}"
        )
    dtype = compute_dtype(config.precision)
    self.model = mvae.MVAE(encoders, self.decoders, self.latent_dim, self.private_dims, dtype=dtype)
    weights = dict(settings.likelihood_weights)
    missing = [m for m in self.modalities if m not in weights]
    if missing:
      raise ConfigError(f"config.mvae.likelihood_weights has no weight for {missing}")
    self.weights = {m: float(weights[m]) for m in self.modalities}
    self.beta, self.anneal_steps = float(settings.beta), int(settings.kl_anneal_steps)
    self.subsets = elbo_subsets(
      self.modalities,
      joint=settings.joint_elbo,
      unimodal=settings.unimodal_elbos,
      cross=settings.cross_reconstruction,
    )
    self.temperature = float(settings.temperature)
    self.grid_conditions, self.grid_samples = int(settings.grid_conditions), int(settings.grid_samples)
    self.array_modalities = tuple(m for m in self.modalities if "shape" in self.decoders[m])
    self._jitted_sample = jax.jit(self._sample, static_argnames=("condition", "target", "num_samples"))

  def training_data(self) -> TrainingData:
    return TrainingData()

  def sample_conditions(self, target: str) -> tuple[str, ...]:
    if target not in self.modalities:
      return ()
    return (*(m for m in self.modalities if m != target), target)

  def sample(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    temperature: float | None = None,
    *,
    condition: tuple[str, ...],
    target: str,
    num_samples: int = 1,
    **options: SampleOption,
  ) -> tuple[jax.Array, jax.Array | None]:
    """Jitted `num_samples` draws of `target` [B, num_samples, ...] from the `condition` modalities alone."""
    if options:
      raise ConfigError(f"sampling option(s) {sorted(options)} do not apply to an MVAE run")
    temperature = self.temperature if temperature is None else temperature
    return self._jitted_sample(
      variables, batch, rng, temperature, condition=tuple(condition), target=target, num_samples=num_samples
    )

  # ---- Model pieces ----

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    missing = [m for m in self.modalities if m not in batch]
    if missing:
      raise ConfigError(f"batch has no input for modalities {missing}; batch keys: {sorted(batch)}")
    return dict(self.model.init(rng, batch))

  def experts(
    self, variables: Variables, batch: Batch
  ) -> tuple[dict[str, tuple[jax.Array, jax.Array]], dict[str, tuple[jax.Array, jax.Array]]]:
    """({m: shared expert (mu, logvar)}, {m: private posterior (mu, logvar)}) for the inputs in `batch`.

    The private dict has only the modalities with a private latent.
    """
    encoded = apply_method(self.model, variables, mvae.MVAE.encode, batch)
    d = self.latent_dim
    shared = {m: (mu[:, :d], logvar[:, :d]) for m, (mu, logvar) in encoded.items()}
    private = {m: (mu[:, d:], logvar[:, d:]) for m, (mu, logvar) in encoded.items() if self.private_dims[m]}
    return shared, private

  def posterior(
    self,
    variables: Variables,
    batch: Batch,
    present: Mapping[str, jax.Array | np.ndarray | bool] | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """q(z | the modalities present): the product of their experts and the prior, (mu, logvar) [B, D].

    `present[m]` (bool [B], or a scalar for all) says which examples have modality m; by default an
    input in the batch is present where its `<m>_present` says so (everywhere without one). Modalities
    not in the batch are absent.
    """
    experts, _ = self.experts(variables, batch)
    size = next(iter(experts.values()))[0].shape[0]
    mus, logvars, mask = [], [], []
    for m, (mu, logvar) in experts.items():
      default = batch.get(f"{m}_present", True)
      is_present = present.get(m, False) if present is not None else default
      mus.append(mu)
      logvars.append(logvar)
      mask.append(jnp.broadcast_to(jnp.asarray(is_present, bool), (size,)))
    return mvae.product_of_experts(jnp.stack(mus), jnp.stack(logvars), jnp.stack(mask))

  def log_likelihood(self, variables: Variables, modality: str, z: jax.Array, batch: Batch) -> jax.Array:
    return apply_method(
      self.model,
      variables,
      mvae.MVAE.log_likelihood,
      modality,
      z,
      batch[modality],
      batch.get(f"{modality}_mask"),
    )

  def decode(
    self,
    variables: Variables,
    modality: str,
    z: jax.Array,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
  ) -> tuple[jax.Array, jax.Array | None]:
    """A sample of `modality` per row of the shared z (a token mask with it for sequences, else None).

    A private latent is drawn from its prior, its spread scaled by `temperature` as z's is. `rng`: one
    key, or one per row of z.
    """
    private_key, rng = rngs.split(rng, 2)
    if self.private_dims[modality]:
      shape = (z.shape[0], self.private_dims[modality])
      z = jnp.concatenate([z, temperature * rngs.normal(private_key, shape, z.dtype)], axis=-1)
    return apply_method(self.model, variables, mvae.MVAE.generate, modality, z, rng, temperature)

  # ---- The objective ----

  def elbo_terms(
    self, variables: Variables, batch: Batch, rng: jax.Array, beta: float | jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(objective [B] to maximise, {metric: [B]}) with one z sample per subset.

    An absent modality (`<m>_present` False) is neither an expert nor scored, and a subset with none of
    its modalities present adds nothing. Decoders run once per modality on the z's of every subset
    that scores it, stacked, rather than once per subset. `rng`: one key per example ([B], each
    example's samples from its own key), or one key for all.
    """
    experts, private = self.experts(variables, batch)
    size = batch[self.modalities[0]].shape[0]
    present = {
      m: jnp.broadcast_to(jnp.asarray(batch.get(f"{m}_present", True), bool), (size,))
      for m in self.modalities
    }
    mus = jnp.stack([experts[m][0] for m in self.modalities])
    logvars = jnp.stack([experts[m][1] for m in self.modalities])
    zs, kls, active, keys = {}, {}, {}, {}
    for subset, key in zip(self.subsets, rngs.split(rng, len(self.subsets)), strict=True):
      mask = jnp.stack([present[m] & (m in subset.posterior) for m in self.modalities])
      mu, logvar = mvae.product_of_experts(mus, logvars, mask)
      zs[subset.name] = mvae.reparameterize(key, mu, logvar)
      kls[subset.name] = mvae.gaussian_kl(mu, logvar)
      active[subset.name] = mask.any(axis=0).astype(jnp.float32)
      keys[subset.name] = key
    recon: dict[tuple[str, str], jax.Array] = {}
    private_kls: dict[str, jax.Array] = {}  # Per modality: the same in every subset that scores it.
    for i, m in enumerate(self.modalities):
      scoring = [s.name for s in self.subsets if m in s.reconstruct]
      inputs = [zs[name] for name in scoring]
      if m in private:
        mu, logvar = private[m]
        private_kls[m] = mvae.gaussian_kl(mu, logvar) * present[m]
        ws = [mvae.reparameterize(rngs.fold_in(keys[name], 1 + i), mu, logvar) for name in scoring]
        inputs = [jnp.concatenate([z, w], axis=-1) for z, w in zip(inputs, ws, strict=True)]
      tiled = {k: jnp.concatenate([batch[k]] * len(scoring)) for k in (m, f"{m}_mask") if k in batch}
      ll = self.log_likelihood(variables, m, jnp.concatenate(inputs), tiled)
      for name, part in zip(scoring, jnp.split(ll, len(scoring)), strict=True):
        recon[name, m] = part * present[m]
    objective = jnp.zeros(size, jnp.float32)
    metrics = {}
    for subset in self.subsets:
      name = subset.name
      scored = sum(recon[name, m] for m in subset.reconstruct)
      weighted = sum(self.weights[m] * recon[name, m] for m in subset.reconstruct)
      private_kl = {m: private_kls[m] for m in subset.reconstruct if m in private_kls}
      kl_private = sum(private_kl.values(), jnp.zeros(size, jnp.float32))
      objective += subset.weight * active[name] * (weighted - beta * kls[name] - self.beta * kl_private)
      metrics[f"{name}/elbo"] = active[name] * (scored - kls[name] - kl_private)
      metrics[f"{name}/kl"] = active[name] * (kls[name] + kl_private)
      metrics |= {f"{name}/kl_private_{m}": active[name] * kl for m, kl in private_kl.items()}
      metrics |= {f"{name}/recon_{m}": active[name] * recon[name, m] for m in subset.reconstruct}
    metrics["elbo"] = metrics["joint/elbo"]
    return objective, metrics

  def loss(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """Per-device negative sub-sampled ELBO (mean over the device's examples); `step` sets the KL weight.

    `rng`: the trainer's per-example keys ([B], `rngs.example_keys`), or one key (tools, tests). The
    MVAE's encoders and decoders run in evaluation mode (no dropout, running statistics): its noise is
    the latent samples', drawn per example, so it has no collections to update.
    """
    del dropout_rng
    beta = kl_weight(step, self.beta, self.anneal_steps)
    objective, metrics = self.elbo_terms(variables, batch, rng, beta)
    loss = -objective.mean()
    return loss, {"loss": loss, "kl_weight": beta, **{k: v.mean() for k, v in metrics.items()}}, {}

  # ---- Evaluation ----

  def example_losses(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Every per-example metric at beta = 1 (the ELBO and its parts; `rng` as `loss`'s)."""
    _, metrics = self.elbo_terms(variables, batch, rng, 1.0)
    return metrics

  # ---- Generation and imputation ----

  def _sample(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
    *,
    condition: tuple[str, ...],
    target: str,
    num_samples: int = 1,
  ) -> tuple[jax.Array, jax.Array | None]:
    inputs = {k: batch[k] for m in condition for k in (m, f"{m}_mask") if k in batch}  # Encode only these.
    mu, logvar = self.posterior(variables, inputs, {m: True for m in condition})
    # Per-example keys: each example's key split into one per sample, the rows of the repeated posterior.
    z_key, decode_key = rngs.split(rngs.per_sample(rng, num_samples), 2)
    mu, logvar = (jnp.repeat(x, num_samples, axis=0) for x in (mu, logvar))
    x, mask = self.decode(
      variables, target, mvae.reparameterize(z_key, mu, logvar, temperature), decode_key, temperature
    )
    unflatten = lambda a: a.reshape(-1, num_samples, *a.shape[1:])  # noqa: E731
    return unflatten(x), None if mask is None else unflatten(mask)

  def impute(
    self,
    variables: Variables,
    batch: Batch,
    present: Mapping[str, jax.Array | np.ndarray],
    rng: jax.Array,
    temperature: float = 1.0,
    targets: Sequence[str] | None = None,
  ) -> dict[str, np.ndarray | jax.Array]:
    """Generative imputation: `batch` with every absent input replaced by a sample given the present ones.

    `present[m]`: bool [B] per modality of the model (a modality not listed, or not in the batch, is
    absent everywhere). z is drawn from the product of the present experts (the prior alone for an
    example with none) at `temperature`, and every absent modality is decoded from it; present inputs
    are returned unchanged, and so are all other keys (`<m>_present` included: the caller decides what
    an imputed input counts as). `targets` (static; default every modality) limits decoding to the
    modalities the caller knows are absent somewhere: a decoder costs as much as a training step's.
    `rng`: one key, or one per example ([B]: an example's imputation then depends on its key alone).
    Pure and traceable: call it inside a jitted step or wrap it in jax.jit.
    """
    size = next(np.shape(batch[m])[0] for m in self.modalities if m in batch)
    flags = {
      m: jnp.broadcast_to(jnp.asarray(present.get(m, False), bool), (size,))
      if m in batch
      else jnp.zeros(size, bool)
      for m in self.modalities
    }
    mu, logvar = self.posterior(variables, batch, flags)
    z_key, *decode_keys = rngs.split(rng, len(self.modalities) + 1)
    z = mvae.reparameterize(z_key, mu, logvar, temperature)
    out = dict(batch)
    for m, key in zip(self.modalities, decode_keys, strict=True):
      if targets is not None and m not in targets and m in batch:
        continue
      x, mask = self.decode(variables, m, z, key, temperature)
      keep = flags[m].reshape(-1, *([1] * (x.ndim - 1)))
      out[m] = jnp.where(keep, batch[m], x.astype(jnp.asarray(batch[m]).dtype)) if m in batch else x
      if mask is not None:
        out[f"{m}_mask"] = jnp.where(flags[m][:, None], batch[f"{m}_mask"], mask) if m in batch else mask
    return out


if TYPE_CHECKING:  # The capabilities this task claims, checked by the type checker (not at run time).
  _CLAIMS: tuple[type[Generator], type[ExampleLosses]] = (MVAETask, MVAETask)
