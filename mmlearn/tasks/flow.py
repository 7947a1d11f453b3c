"""The flow task: conditional flow matching (rectified flow) with classifier-free guidance.

Task `"flow"` is a `Task`, a `Generator` and an `ExampleLosses` (`mmlearn.tasks.contract`) and owns the
`flow` config section. It generates one array modality (`flow.target`: the image, or a spectrogram)
given the one modality of `config.model.modalities` (the condition, read by its registered encoder),
with the U-Net of `mmlearn.models.unet.FlowNet`.

The path from noise x0 ~ N(0, I) to data x1 is the straight line x_t = (1 - t) x0 + t x1 (rectified
flow, the optimal-transport path of Lipman et al. 2023 with sigma_min = 0), whose velocity is x1 - x0;
the network regresses it: loss = E_t,x0 |v(x_t, t, c) - (x1 - x0)|^2, averaged over pixels, with t ~ U[0, 1]
or logit-normal (`flow.time_sampling`).
With probability `flow.cond_dropout` an example's condition is replaced by the learned null embedding,
so the same network also learns the unconditional velocity. Sampling integrates dx/dt = v from t = 0
to 1 with `flow.num_steps` Euler or Heun steps, with the guided velocity
v_u + w (v_c - v_u) (classifier-free guidance, Ho & Salimans 2022): w = 0 is the unconditional model,
w = 1 the conditional one, w > 1 trades diversity for agreement with the condition.

Randomness (x0, t and the dropout draw of each example) comes from one key per example, as the MVAE's
does (`mmlearn.rngs`), so a run trains the same parameters on any number of devices; `sample` also takes
one key for the whole batch (tools). Reported: `flow_loss` (training, and evaluation with the condition
always kept and fixed keys).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax import lax

from mmlearn import rngs
from mmlearn.data.pipeline import Source, TrainingData
from mmlearn.errors import ConfigError
from mmlearn.models.config import compute_dtype, resolve_modalities
from mmlearn.models.unet import FlowNet
from mmlearn.tasks.contract import (
  Batch,
  ExampleLosses,
  Generator,
  RunLoader,
  SampleOption,
  Variables,
  apply_for_training,
  apply_method,
)
from mmlearn.tasks.registry import register

SAMPLERS = ("euler", "heun")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def interpolate(noise: jax.Array, data: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t x1, t [B] broadcast over each example's array."""
  t = t.reshape(-1, *([1] * (data.ndim - 1)))
  return (1.0 - t) * noise + t * data


def velocity_loss(predicted: jax.Array, noise: jax.Array, data: jax.Array) -> jax.Array:
  """Per-example mean squared error [B] between the predicted and the path's velocity x1 - x0."""
  return jnp.mean(jnp.square(predicted - (data - noise)), axis=tuple(range(1, data.ndim)))


def guide(conditional: jax.Array, unconditional: jax.Array, scale: float | jax.Array) -> jax.Array:
  """Classifier-free guidance: v_u + scale (v_c - v_u)."""
  return unconditional + scale * (conditional - unconditional)


def integrate(
  velocity: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, num_steps: int, sampler: str
) -> jax.Array:
  """x at t = 1 from x at t = 0 along dx/dt = velocity(x, t): `num_steps` Euler or Heun steps."""
  if sampler not in SAMPLERS:
    raise ConfigError(f"unknown flow.sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
  dt = 1.0 / num_steps

  def step(i: jax.Array, x: jax.Array) -> jax.Array:
    t = i * dt
    v = velocity(x, t)
    if sampler == "euler":
      return x + dt * v
    return x + 0.5 * dt * (v + velocity(x + dt * v, t + dt))  # Heun: the trapezoid of two slopes.

  return lax.fori_loop(0, num_steps, step, x)


def uniform(keys: jax.Array, size: int) -> jax.Array:
  """[size] U[0, 1) draws: row i from key i for per-example keys, else from the one key."""
  if rngs.is_batched(keys):
    return jax.vmap(lambda k: jax.random.uniform(k))(keys)
  return jax.random.uniform(keys, (size,))


def training_times(keys: jax.Array, size: int, how: str) -> jax.Array:
  """[size] training times in (0, 1): uniform, or the sigmoid of a standard normal (`logit_normal`)."""
  if how == "uniform":
    return uniform(keys, size)
  return jax.nn.sigmoid(rngs.normal(keys, (size,)))


def _is_number(value: object) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


@register("flow")
class FlowTask:
  """The flow model as a task: the contract's `Task`, `Generator` and `ExampleLosses`.

  `sample` takes the options `guidance_scale`, `num_steps` and `sampler` (default: the config's);
  `temperature` scales the starting noise. Deterministic in `rng` (one key, or [B] keys).
  `sample_conditions(target)` is the condition alone; `array_modalities` the target.
  """

  summary_metric = "flow_loss"
  separable_loss = True
  default_evaluators = ("loss", "samples")
  sample_options: tuple[str, ...] = ("guidance_scale", "num_steps", "sampler")

  @staticmethod
  def config_sections() -> dict[str, ml_collections.ConfigDict]:
    """`flow`, with its defaults. The condition is the one modality of config.model.modalities (its
    encoder); the target is generated."""
    settings = ml_collections.ConfigDict()
    settings.target = "image"  # The generated array modality (image or audio).
    settings.widths = (32, 64)  # U-Net channels per resolution; H and W divisible by 2 ** (levels - 1).
    settings.blocks = 1  # Residual blocks per resolution (each way).
    settings.groups = 8  # GroupNorm groups.
    settings.embed_dim = 128  # Time and condition embedding width (FiLM input).
    # Training times t: "uniform" on [0, 1], or "logit_normal" (sigmoid of N(0, 1): Esser et al. 2024),
    # which spends more of the training on the middle of the path, where the velocity is hardest to predict.
    settings.time_sampling = "uniform"
    settings.cond_dropout = 0.1  # P(the condition is replaced by the learned null one): enables guidance.
    settings.guidance_scale = 1.0  # Classifier-free guidance at sampling: 0 unconditional, 1 conditional.
    settings.num_steps = 20  # ODE steps from noise to data.
    settings.sampler = "euler"  # euler | heun
    settings.temperature = 1.0  # Scale of the starting noise (generate.py's default).
    settings.grid_conditions = 8  # Sample grids: rows (the split's first examples) ...
    settings.grid_samples = 4  # ... and samples per row; 0 disables the grids.
    return {"flow": settings}

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """A ConfigError naming the first `config.flow` key out of range."""
    settings = config.flow
    if not 0 <= settings.cond_dropout < 1:
      raise ConfigError(f"flow.cond_dropout must be in [0, 1), got {settings.cond_dropout}")
    if settings.sampler not in SAMPLERS:
      raise ConfigError(f"unknown flow.sampler {settings.sampler!r}; known: {', '.join(SAMPLERS)}")
    if settings.time_sampling not in TIME_SAMPLINGS:
      raise ConfigError(
        f"unknown flow.time_sampling {settings.time_sampling!r}; known: {', '.join(TIME_SAMPLINGS)}"
      )
    widths = tuple(settings.widths)
    if not widths or any(not isinstance(w, int) or w <= 0 for w in widths):
      raise ConfigError(f"flow.widths must be positive integers, got {widths}")
    for key in ("num_steps", "blocks", "groups", "embed_dim"):
      if settings[key] <= 0:
        raise ConfigError(f"flow.{key} must be positive, got {settings[key]}")
    if settings.embed_dim % 2:
      raise ConfigError(f"flow.embed_dim must be even (sine and cosine halves), got {settings.embed_dim}")
    for key in ("temperature", "grid_conditions", "grid_samples"):
      if settings[key] < 0:
        raise ConfigError(f"flow.{key} must be >= 0, got {settings[key]}")

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
    settings = config.flow
    self.check_config(config)
    encoders = resolve_modalities(config.model.modalities, vocab_size)
    self.target = settings.target
    if self.target in encoders or len(encoders) != 1:
      raise ConfigError(
        f"task 'flow' needs one condition in config.model.modalities, other than config.flow.target "
        f"{self.target!r}; got {sorted(encoders)}"
      )
    ((self.condition, encoder),) = encoders.items()
    # The target's shape, for sampling from a batch without it (a caption); else read from the batch.
    features = info.features if info is not None else {}
    self.shape = None
    if self.target in features:
      if not getattr(features[self.target], "shape", None):
        raise ConfigError(f"config.flow.target {self.target!r} is not an array input of the dataset")
      self.shape = tuple(features[self.target].shape)
    self.modalities = tuple(sorted((self.condition, self.target)))
    self.array_modalities = (self.target,)
    self.cond_dropout = float(settings.cond_dropout)
    self.time_sampling = settings.time_sampling
    self.guidance_scale, self.num_steps = float(settings.guidance_scale), int(settings.num_steps)
    self.sampler, self.temperature = settings.sampler, float(settings.temperature)
    self.grid_conditions, self.grid_samples = int(settings.grid_conditions), int(settings.grid_samples)
    self.model = FlowNet(
      self.condition,
      encoder,
      widths=tuple(settings.widths),
      blocks=int(settings.blocks),
      groups=int(settings.groups),
      embed_dim=int(settings.embed_dim),
      dtype=compute_dtype(config.precision),
    )
    self._jitted_sample = jax.jit(
      self._sample,
      static_argnames=("condition", "target", "num_samples", "guidance_scale", "num_steps", "sampler"),
    )

  def training_data(self) -> TrainingData:
    return TrainingData()

  def sample_conditions(self, target: str) -> tuple[str, ...]:
    return (self.condition,) if target == self.target else ()

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
    """Jitted `num_samples` draws [B, num_samples, ...] of the target given the condition (mask: None)."""
    unknown = sorted(set(options) - set(self.sample_options))
    if unknown:
      raise ConfigError(
        f"sampling option(s) {unknown} do not apply to a flow run; it takes {self.sample_options}"
      )
    return self._jitted_sample(
      variables,
      batch,
      rng,
      temperature,
      condition=tuple(condition),
      target=target,
      num_samples=num_samples,
      **options,
    )

  # ---- Model pieces ----

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    for m in self.modalities:
      if m not in batch:
        raise ConfigError(f"batch has no input for modality {m!r}; batch keys: {sorted(batch)}")
    size = batch[self.target].shape[0]
    return dict(self.model.init(rng, batch[self.target], jnp.zeros(size), batch, jnp.zeros(size, bool)))

  def draws(
    self, rng: jax.Array, size: int, shape: Sequence[int], drop_rate: float
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x0 [size, *shape], t [size], condition dropped [size]) from one key per example (or one key)."""
    noise_key, time_key, drop_key = rngs.split(rng, 3)
    noise = rngs.normal(noise_key, (size, *shape))
    t = training_times(time_key, size, self.time_sampling)
    return noise, t, uniform(drop_key, size) < drop_rate

  def losses(
    self, variables: Variables, batch: Batch, rng: jax.Array, *, drop_rate: float, **apply: jax.Array | None
  ) -> tuple[jax.Array, Variables]:
    """(per-example velocity loss [B], updated collections); `apply`: train mode and its dropout key."""
    data = jnp.asarray(batch[self.target], jnp.float32)
    noise, t, drop = self.draws(rng, data.shape[0], data.shape[1:], drop_rate)
    x_t = interpolate(noise, data, t)
    if apply:
      predicted, updated = apply_for_training(self.model, variables, x_t, t, batch, drop, **apply)
    else:  # flax types `apply`'s result as output or (output, collections); without `mutable`, the output.
      predicted, updated = cast(jax.Array, self.model.apply(variables, x_t, t, batch, drop)), {}
    return velocity_loss(predicted, noise, data), updated

  def loss(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    *,
    step: jax.Array | int | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array], Variables]:
    """Per-device mean velocity loss, the condition dropped for a `flow.cond_dropout` share of examples."""
    del step  # No schedule inside the loss.
    per_example, updated = self.losses(
      variables, batch, rng, drop_rate=self.cond_dropout, dropout_rng=dropout_rng
    )
    loss = per_example.mean()
    return loss, {"loss": loss, "flow_loss": loss}, updated

  # ---- Evaluation ----

  def example_losses(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """The velocity loss of each example with every condition kept (`rng`: one key per example)."""
    per_example, _ = self.losses(variables, batch, rng, drop_rate=0.0)
    return {"flow_loss": per_example}

  # ---- Sampling and imputation ----

  def guided_velocity(
    self,
    variables: Variables,
    x: jax.Array,
    t: float | jax.Array,
    condition: jax.Array,
    scale: float | jax.Array,
  ) -> jax.Array:
    """The guided velocity at x [N, ...], time t (a scalar), condition embeddings [N, E].

    A Python scale of 1 (0) runs only the conditional (unconditional) branch; any other scale runs both
    in one batch of 2N.
    """
    velocity = lambda x, t, c: apply_method(self.model, variables, FlowNet.velocity, x, t, c)  # noqa: E731
    t = jnp.full((x.shape[0],), t, jnp.float32)
    null = jnp.broadcast_to(variables["params"]["embed"]["null"], condition.shape)
    if _is_number(scale) and scale == 1:
      return velocity(x, t, condition)
    if _is_number(scale) and scale == 0:
      return velocity(x, t, null)
    both = velocity(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([condition, null]))
    conditional, unconditional = jnp.split(both, 2)
    return guide(conditional, unconditional, scale)

  def _sample(
    self,
    variables: Variables,
    batch: Batch,
    rng: jax.Array,
    temperature: float | jax.Array | None = None,
    *,
    condition: tuple[str, ...],
    target: str,
    num_samples: int = 1,
    guidance_scale: float | None = None,
    num_steps: int | None = None,
    sampler: str | None = None,
    unconditional: jax.Array | None = None,
  ) -> tuple[jax.Array, None]:
    if tuple(condition) != (self.condition,) or target != self.target:
      raise ConfigError(
        f"the flow run generates {self.target} from {self.condition}, "
        f"not {target} from {', '.join(condition)}"
      )
    shape = self.shape
    if shape is None and target in batch:
      shape = tuple(batch[target].shape[1:])
    if shape is None:
      raise ConfigError(f"the {target} shape is unknown: build the task with the dataset's info")
    temperature = self.temperature if temperature is None else temperature
    scale = self.guidance_scale if guidance_scale is None else guidance_scale
    inputs = {k: batch[k] for k in (self.condition, f"{self.condition}_mask") if k in batch}
    size = inputs[self.condition].shape[0]
    drop = jnp.zeros(size, bool) if unconditional is None else jnp.asarray(unconditional, bool)
    embedded = apply_method(self.model, variables, FlowNet.encode, inputs, drop)
    embedded = jnp.repeat(embedded, num_samples, axis=0)
    keys = rngs.per_sample(rng, num_samples)  # Example-major: rows i * num_samples + j.
    x = temperature * rngs.normal(keys, (size * num_samples, *shape))
    x = integrate(
      lambda x, t: self.guided_velocity(variables, x, t, embedded, scale),
      x,
      num_steps or self.num_steps,
      sampler or self.sampler,
    )
    return jnp.clip(x, -1.0, 1.0).reshape(size, num_samples, *shape), None

  def impute(
    self,
    variables: Variables,
    batch: Batch,
    present: Mapping[str, jax.Array | np.ndarray],
    rng: jax.Array,
    temperature: float = 1.0,
    targets: Sequence[str] | None = None,
  ) -> dict[str, np.ndarray | jax.Array]:
    """`batch` with an absent target generated from the example's condition, as `MVAETask.impute`.

    Where the condition is absent too, the target is drawn unconditionally (the null embedding that
    condition dropout trained), never from the input the example is said to lack. The flow generates its
    target only: an absent condition becomes 0 (an empty token sequence), as the `zero` imputation would
    make it. Present inputs and every other key are returned unchanged.
    """
    if self.condition not in batch:
      raise ConfigError(f"the flow run imputes {self.target} from {self.condition}, which the batch lacks")
    size = batch[self.condition].shape[0]
    flags = {m: jnp.broadcast_to(jnp.asarray(present.get(m, False), bool), (size,)) for m in self.modalities}
    out = dict(batch)
    if targets is None or self.target in targets:
      x, _ = self._sample(
        variables,
        batch,
        rng,
        temperature,
        condition=(self.condition,),
        target=self.target,
        unconditional=~flags[self.condition],
      )
      x = x[:, 0]
      if self.target in batch:
        keep = flags[self.target].reshape(-1, *([1] * (x.ndim - 1)))
        x = jnp.where(keep, batch[self.target], x.astype(jnp.asarray(batch[self.target]).dtype))
      out[self.target] = x
    if targets is None or self.condition in targets:
      for key in (self.condition, f"{self.condition}_mask"):
        if key in batch:
          keep = flags[self.condition].reshape(-1, *([1] * (jnp.ndim(batch[key]) - 1)))
          out[key] = jnp.where(keep, batch[key], jnp.zeros_like(batch[key]))
    return out


if TYPE_CHECKING:  # The capabilities this task claims, checked by the type checker (not at run time).
  _CLAIMS: tuple[type[Generator], type[ExampleLosses]] = (FlowTask, FlowTask)
