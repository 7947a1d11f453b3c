"""The flow task: the loss on a toy mixture, sampling, guidance, the Fréchet metrics, a tiny run and its CLI.

Values that pass through convolutions are compared with a tolerance (XLA blocks kernels by shape), values
computed twice by the same program exactly.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.flow import tiny
from conftest import run_python
from mmlearn.data import mmshapes, pipeline
from mmlearn.errors import ConfigError
from mmlearn.metrics import generation as generation_metrics
from mmlearn.models import unet
from mmlearn.runs import restore
from mmlearn.tasks import TASKS, flow, imputation
from mmlearn.train import loop

VOCAB = len(mmshapes.VOCABULARY)


def tiny_config(data_dir):
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def task_and_batch(retrieval_tiny_data):
  """The tiny task, a batch of 8, and perturbed variables: at initialisation every residual block's last
  conv is zero, so the condition would not change the velocity yet."""
  directory, sources, info = retrieval_tiny_data
  task = TASKS.get("flow")(tiny_config(directory), info=info, vocab_size=VOCAB)
  batch = next(pipeline.eval_batches(sources["test"], batch_size=8, max_tokens=16))
  variables = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  return task, batch, jax.tree.unflatten(tree, leaves)


# ---- The objective on a toy distribution ----


class ToyVelocity(nn.Module):
  @nn.compact
  def __call__(self, x, t):
    h = jnp.concatenate([x, unet.timestep_embedding(t, 16)], axis=-1)
    for _ in range(3):
      h = nn.swish(nn.Dense(64)(h))
    return nn.Dense(2)(h)


@pytest.mark.e2e
def test_flow_matching_loss_drives_samples_to_a_mixture_of_gaussians():
  modes = jnp.array([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
  model, tx = ToyVelocity(), optax.adam(3e-3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1))

  def step(carry, key):
    params, opt_state = carry
    mode_key, spread_key, noise_key, time_key = jax.random.split(key, 4)
    data = modes[jax.random.randint(mode_key, (256,), 0, 4)] + 0.1 * jax.random.normal(spread_key, (256, 2))
    noise, t = jax.random.normal(noise_key, (256, 2)), jax.random.uniform(time_key, (256,))

    def loss(p):
      predicted = model.apply(p, flow.interpolate(noise, data, t), t)
      return flow.velocity_loss(predicted, noise, data).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), value

  train_steps = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
  (params, _), losses = train_steps((params, tx.init(params)), jax.random.split(jax.random.PRNGKey(1), 1500))
  assert losses[-100:].mean() < losses[:100].mean()
  velocity = lambda x, t: model.apply(params, x, jnp.full(x.shape[0], t))  # noqa: E731
  start = jax.random.normal(jax.random.PRNGKey(2), (2000, 2))
  samples = np.asarray(jax.jit(lambda x: flow.integrate(velocity, x, 40, "heun"))(start))
  distance = np.linalg.norm(samples[:, None] - np.asarray(modes)[None], axis=-1)
  assert (distance.min(1) < 0.5).mean() > 0.9  # Near a mode, not between them...
  shares = np.bincount(distance.argmin(1), minlength=4) / len(samples)
  assert shares.min() > 0.15, shares  # ...and every mode recovered, about equally.


def test_the_path_and_its_velocity():
  noise, data = np.full((2, 3), -1.0, np.float32), np.full((2, 3), 3.0, np.float32)
  np.testing.assert_allclose(flow.interpolate(noise, data, jnp.array([0.0, 1.0])), [[-1.0] * 3, [3.0] * 3])
  np.testing.assert_allclose(flow.interpolate(noise, data, jnp.array([0.25, 0.5])), [[0.0] * 3, [1.0] * 3])
  np.testing.assert_allclose(flow.velocity_loss(data - noise, noise, data), [0.0, 0.0])
  np.testing.assert_allclose(flow.velocity_loss(data - noise + 2, noise, data), [4.0, 4.0])
  # A constant velocity is integrated exactly by either sampler, in any number of steps.
  for sampler in flow.SAMPLERS:
    np.testing.assert_allclose(flow.integrate(lambda x, t: data - noise, noise, 3, sampler), data, rtol=1e-6)
  with pytest.raises(ConfigError, match="unknown flow.sampler 'rk4'"):
    flow.integrate(lambda x, t: x, noise, 3, "rk4")


def test_training_times_are_uniform_or_logit_normal():
  key = jax.random.PRNGKey(0)
  uniform, logit_normal = (flow.training_times(key, 20_000, how) for how in flow.TIME_SAMPLINGS)
  for t in (uniform, logit_normal):
    assert t.shape == (20_000,) and float(t.min()) > 0 and float(t.max()) < 1
  middle = lambda t: float(jnp.mean((t > 0.25) & (t < 0.75)))  # noqa: E731
  assert abs(middle(uniform) - 0.5) < 0.02
  assert abs(middle(logit_normal) - 0.728) < 0.02  # P(|z| < logit(0.75) = 1.099) for z ~ N(0, 1).
  np.testing.assert_allclose(jnp.log(logit_normal / (1 - logit_normal)).std(), 1.0, atol=0.03)
  # One key per example: row i depends on key i only.
  keys = jax.random.split(key, 6)
  rows = flow.training_times(keys, 6, "logit_normal")
  np.testing.assert_array_equal(rows[:3], flow.training_times(keys[:3], 3, "logit_normal"))


# ---- The task: sampling and guidance ----


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_sampler_is_deterministic_given_the_seed(task_and_batch):
  task, batch, variables = task_and_batch
  draw = lambda key, **kw: task.sample(  # noqa: E731
    variables, batch, key, 1.0, condition=("text",), target="image", num_samples=2, **kw
  )
  first, mask = draw(jax.random.PRNGKey(0))
  assert mask is None and first.shape == (8, 2, 32, 32, 3) and np.abs(first).max() <= 1.0
  np.testing.assert_array_equal(first, draw(jax.random.PRNGKey(0))[0])
  assert not np.allclose(first, draw(jax.random.PRNGKey(1))[0])
  assert not np.allclose(first, draw(jax.random.PRNGKey(0), sampler="heun")[0])
  # One key per example: an example's samples do not depend on the rest of its batch.
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(8))
  full = draw(keys)[0]
  half = task.sample(
    variables,
    {k: v[:4] for k, v in batch.items()},
    keys[:4],
    1.0,
    condition=("text",),
    target="image",
    num_samples=2,
  )[0]
  np.testing.assert_allclose(half, full[:4], atol=1e-5)
  with pytest.raises(ConfigError, match="generates image from text, not text from image"):
    task.sample(variables, batch, keys, condition=("image",), target="text")


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_guidance_scale_0_is_the_unconditional_model_and_1_the_conditional(task_and_batch):
  task, batch, variables = task_and_batch
  size = len(batch["image"])
  x = jax.random.normal(jax.random.PRNGKey(4), batch["image"].shape)
  # Jitted: compiling the model once is faster than compiling each of its ops for eager calls.
  apply = jax.jit(lambda x, t, drop: task.model.apply(variables, x, jnp.full(size, t), batch, drop))
  conditional, unconditional = apply(x, 0.3, jnp.zeros(size, bool)), apply(x, 0.3, jnp.ones(size, bool))
  assert not np.allclose(conditional, unconditional, atol=1e-3)  # The condition matters to this model.
  embedded = jax.jit(task.model.apply, static_argnames="method")(
    variables, batch, jnp.zeros(size, bool), method=unet.FlowNet.encode
  )
  guided_by = jax.jit(task.guided_velocity, static_argnums=4)  # A Python scale picks the branches.
  mixed = jax.jit(task.guided_velocity)  # A traced scale runs both.
  for scale, expected in ((0.0, unconditional), (1.0, conditional)):
    np.testing.assert_allclose(guided_by(variables, x, 0.3, embedded, scale), expected, atol=1e-5)  # One...
    np.testing.assert_allclose(mixed(variables, x, 0.3, embedded, scale), expected, atol=1e-5)  # ...or both.
  np.testing.assert_allclose(
    guided_by(variables, x, 0.3, embedded, 3.0), 3 * conditional - 2 * unconditional, atol=1e-4
  )
  # The sampler at scale 0 is the Euler integration of the condition-dropped model.
  key = jax.random.PRNGKey(5)
  sampled, _ = task.sample(variables, batch, key, condition=("text",), target="image", guidance_scale=0.0)
  x = jax.random.normal(key, batch["image"].shape)
  for i in range(task.num_steps):
    x = x + apply(x, i / task.num_steps, jnp.ones(size, bool)) / 3
  np.testing.assert_allclose(sampled[:, 0], np.clip(x, -1, 1), atol=1e-4)


def test_config_errors_name_the_key(retrieval_tiny_data):
  directory, _, info = retrieval_tiny_data
  for key, value, message in (
    ("cond_dropout", 1.0, r"flow.cond_dropout must be in \[0, 1\)"),
    ("sampler", "rk4", "unknown flow.sampler 'rk4'"),
    ("time_sampling", "beta", "unknown flow.time_sampling 'beta'"),
    ("num_steps", 0, "flow.num_steps must be positive"),
    ("target", "label", "not an array input"),
  ):
    config = tiny_config(directory)
    config.flow[key] = value
    with pytest.raises(ConfigError, match=message):
      TASKS.get("flow")(config, info=info, vocab_size=VOCAB)
  config = tiny_config(directory)
  config.model.modalities.image = {"encoder": "cnn"}
  with pytest.raises(ConfigError, match="needs one condition in config.model.modalities"):
    TASKS.get("flow")(config, info=info, vocab_size=VOCAB)
  config = tiny_config(directory)
  config.flow.widths = (8, 8, 8, 8, 8, 8)  # 32 pixels halved 5 times is 1: not divisible by 32.
  task = TASKS.get("flow")(config, info=info, vocab_size=VOCAB)
  batch = {"image": jnp.zeros((2, 36, 36, 3)), "text": jnp.ones((2, 16), jnp.int32)}
  with pytest.raises(ConfigError, match="not divisible by 32"):
    jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_loss(retrieval_tiny_data):
  directory, _, info = retrieval_tiny_data
  config = tiny_config(directory)
  config.precision = "bfloat16"
  task = TASKS.get("flow")(config, info=info, vocab_size=VOCAB)
  batch = {"image": jnp.zeros((2, 32, 32, 3)), "text": jnp.ones((2, 16), jnp.int32)}
  variables = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)  # Shapes only: nothing runs.
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
  loss = jax.eval_shape(lambda v: task.loss(v, batch, jax.random.PRNGKey(1))[0], variables)
  assert loss.dtype == jnp.float32
  program = str(jax.make_jaxpr(lambda v: task.loss(v, batch, jax.random.PRNGKey(1))[0])(variables))
  assert "conv_general_dilated" in program and "bf16[2,32,32,8]" in program  # The stem's output.


# ---- The Fréchet distance and diversity ----


def test_frechet_distance_is_zero_against_itself_and_grows_with_noise():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))  # Correlated features.
  assert generation_metrics.frechet_distance(features, features) < 1e-6
  noisy = [
    generation_metrics.frechet_distance(features, features + s * rng.normal(size=features.shape))
    for s in (0.1, 0.5, 2.0)
  ]
  assert 0 < noisy[0] < noisy[1] < noisy[2], noisy
  # Two Gaussians: |mu_a - mu_b|^2 + sum_i (s_a - s_b)^2 = 4 * 1 + 4 * (1 - 2)^2 = 8.
  a, b = rng.normal(size=(40000, 4)), 1.0 + 2.0 * rng.normal(size=(40000, 4))
  assert generation_metrics.frechet_distance(a, b) == pytest.approx(8.0, abs=0.25)
  even, odd = generation_metrics.halves(7)
  assert even.tolist() == [0, 2, 4] and odd.tolist() == [1, 3, 5]


def test_class_diversity_is_the_mean_within_class_distance():
  features = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
  labels = np.array([0, 0, 1, 1, 2])  # Class 0: distance 5; class 1 collapsed: 0; class 2: one member.
  assert generation_metrics.class_diversity(features, labels) == pytest.approx(2.5)


# ---- A tiny run: the loss falls, grids are written, the CLI generates and judges, imputation ----


@pytest.fixture(scope="module")
def trained_run(retrieval_tiny_data, tmp_path_factory):
  directory, _, _ = retrieval_tiny_data
  workdir = tmp_path_factory.mktemp("flow_run")
  return workdir, loop.train_and_evaluate(tiny_config(directory), str(workdir))


@pytest.mark.e2e
def test_tiny_config_trains_and_writes_sample_grids(trained_run):
  workdir, results = trained_run
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_loss = {line["step"]: line["train/flow_loss"] for line in lines if "train/flow_loss" in line}
  assert sorted(train_loss) == [5, 10] and train_loss[10] < train_loss[5], train_loss
  for split in ("validation", "test"):
    assert 0 < results[f"{split}/flow_loss"] < train_loss[5]
    assert (workdir / f"{split}_samples_text_to_image.png").stat().st_size > 0
  assert json.loads((workdir / "config.json").read_text())["ema_decay"] > 0  # Evaluated on the average.


@pytest.mark.e2e
def test_generate_cli_judges_a_flow_run_with_guidance(trained_run, retrieval_tiny_data, tmp_path):
  workdir, _ = trained_run
  from configs.mvae import judge_mmshapes

  config = judge_mmshapes.get_config()
  config.dataset.update(config="retrieval_tiny", data_dir=retrieval_tiny_data[0], eval_splits=("test",))
  config.model.modalities.image.update(widths=(8,), dense=16)
  config.update(
    num_train_steps=2, batch_size=32, eval_batch_size=128, log_every_steps=2, checkpoint_every_steps=2
  )
  loop.train_and_evaluate(config, str(tmp_path / "judge"))
  flags = [f"--judge={tmp_path / 'judge'}", "--guidance_scale=2", "--num_steps=2", "--sampler=heun"]
  flags.append("--num_examples=100")
  result = run_python(["scripts/generate.py", f"--workdir={workdir}", *flags])
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / "coherence.json").read_text())
  assert record["examples"] == 100 and record["sampling"].startswith("guidance 2, 2 heun steps")
  assert record["sampling_ms_per_image"]["text_to_image"] > 0
  assert 0 <= record["coherence/test/text_to_image/label"] <= 1
  assert "coherence/test/image_to_image/label" not in record  # The flow draws images from text only.
  assert record["frechet/test/real_floor"] < record["frechet/test/text_to_image"]  # 10 steps: far off.
  assert record["diversity/test/real"] > 0 and record["diversity/test/text_to_image/ratio"] > 0


@pytest.mark.e2e
def test_generative_imputation_draws_the_image_from_a_flow_run(trained_run, retrieval_tiny_data):
  workdir, _ = trained_run
  _, sources, _ = retrieval_tiny_data
  generate = imputation.load_generator(restore.load_run_variables, str(workdir), ("image", "text"), 1.0)
  batch = next(pipeline.eval_batches(sources["test"], batch_size=8, max_tokens=16))
  present = {"image": np.array([True, False] * 4), "text": np.array([True, True, False, True] * 2)}
  filled = generate({k: v for k, v in batch.items() if k != "weight"}, present, 0)
  np.testing.assert_array_equal(filled["image"][::2], batch["image"][::2])  # Present: copied.
  assert not np.allclose(filled["image"][1::2], batch["image"][1::2]) and np.abs(filled["image"]).max() <= 1
  np.testing.assert_array_equal(filled["text"][present["text"]], batch["text"][present["text"]])
  assert not filled["text"][~present["text"]].any() and not filled["text_mask"][~present["text"]].any()
  # Where the caption is absent too, the image is drawn without it: another caption changes nothing there.
  both = {"image": np.zeros(8, bool), "text": np.array([True, False] * 4)}
  inputs = {k: v for k, v in batch.items() if k != "weight"}
  other = inputs | {
    "text": np.roll(inputs["text"], 1, axis=0),
    "text_mask": np.roll(inputs["text_mask"], 1, axis=0),
  }
  first, second = generate(inputs, both, 0)["image"], generate(other, both, 0)["image"]
  np.testing.assert_allclose(first[1::2], second[1::2], atol=1e-6)
  assert np.abs(first[::2] - second[::2]).max() > 1e-3  # A present caption does steer its image.
  # Only rows lacking the image are sampled, each from its own key: the others' absence changes nothing.
  few = {"image": np.isin(np.arange(8), [1, 3], invert=True), "text": np.ones(8, bool)}
  more = {"image": np.isin(np.arange(8), [1, 3, 4, 6], invert=True), "text": np.ones(8, bool)}
  np.testing.assert_allclose(
    generate(inputs, few, 0)["image"][[1, 3]], generate(inputs, more, 0)["image"][[1, 3]], atol=1e-6
  )
  config = tiny_config(retrieval_tiny_data[0])
  config.task = "classification"
  with pytest.raises(ConfigError, match="not an 'mvae' run or a 'flow' run"):
    imputation.check_run(config, "RUN", ("image", "text"))


@pytest.mark.e2e
def test_a_run_starts_from_another_runs_encoder_and_keeps_it_frozen(
  trained_run, retrieval_tiny_data, tmp_path
):
  source_dir, _ = trained_run
  config = tiny_config(retrieval_tiny_data[0])
  config.seed = 1  # Its own initialisation differs from the source's everywhere.
  config.num_train_steps = 4
  config.init_from.update(workdir=str(source_dir), params="embed/encoder=embed/encoder")
  config.optimizer.frozen = "embed/encoder/"
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  _, _, _, source = restore.load_run(restore.read_config(str(source_dir)), str(source_dir), ())
  _, _, _, started = restore.load_run(restore.read_config(str(tmp_path / "run")), str(tmp_path / "run"), ())
  # The EMA of an unchanging parameter is that parameter, up to the average's rounding.
  pairs = zip(
    jax.tree.leaves(source["params"]["embed"]["encoder"]),
    jax.tree.leaves(started["params"]["embed"]["encoder"]),
    strict=True,
  )
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  unet = [
    np.abs(a - b).max()
    for a, b in zip(
      jax.tree.leaves(source["params"]["unet"]), jax.tree.leaves(started["params"]["unet"]), strict=True
    )
  ]
  assert min(unet) > 1e-4, unet  # Not copied: trained from this run's own initialisation.
