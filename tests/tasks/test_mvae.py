"""The MVAE: PoE and ELBO pieces against numpy, decoders, sampling, imputation, a tiny run, generate.py.

Float results that pass through matmuls or convolutions are compared with a tolerance, never bitwise: XLA
blocks its kernels by shape and CPU, so the same values computed in batches of different sizes (or on
another machine) differ in the last bits. Values that are copied (inputs kept by imputation, tokens,
masks, a computation repeated with the same shapes) are compared exactly.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import stats

from configs.mvae import tiny
from conftest import main_in_process, run_python
from mmlearn import optim, rngs
from mmlearn import parallel as parallel_lib
from mmlearn.config import checks as config_checks
from mmlearn.data import mmshapes, pipeline
from mmlearn.errors import ConfigError
from mmlearn.evaluators import coherence
from mmlearn.metrics import generation as generation_metrics
from mmlearn.metrics.images import Image, sample_grid
from mmlearn.models import decoders, mvae
from mmlearn.runs.metric_writer import MetricWriter
from mmlearn.runs.workdir import write_config
from mmlearn.tasks import TASKS
from mmlearn.tasks import mvae as mvae_task
from mmlearn.tasks.mvae import kl_weight
from mmlearn.train import loop
from mmlearn.train.state import TrainState
from mmlearn.train.step import train_step

VOCAB = len(mmshapes.VOCABULARY)


def tiny_config(data_dir):
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def task_and_batch(retrieval_tiny_data):
  directory, sources, info = retrieval_tiny_data
  task = TASKS.get("mvae")(tiny_config(directory), info=info, vocab_size=VOCAB)
  batch = next(pipeline.train_iterator(sources["train"], batch_size=8, seed=0, max_tokens=16))
  params = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  return task, batch, params


# ---- The ELBO's pieces against numpy ----


def test_product_of_experts_matches_the_precision_weighted_formula():
  rng = np.random.default_rng(0)
  mus = rng.normal(size=(2, 4, 3)).astype(np.float32)
  logvars = rng.normal(size=(2, 4, 3)).astype(np.float32)
  present = np.array([[True, True, False, False], [True, False, True, False]])
  mu, logvar = mvae.product_of_experts(mus, logvars, present)
  precisions = np.exp(-logvars.astype(np.float64)) * present[..., None]
  total = 1.0 + precisions.sum(0)  # The N(0, I) prior expert has precision 1 and mean 0.
  np.testing.assert_allclose(mu, (precisions * mus).sum(0) / total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logvar, -np.log(total), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mu[3], 0.0, atol=1e-7)  # No expert: exactly the prior.
  np.testing.assert_allclose(logvar[3], 0.0, atol=1e-7)
  # An absent expert gets no gradient, even a non-finite one from garbage inputs.
  grad = jax.grad(lambda m: mvae.product_of_experts(m, logvars, present)[0].sum())(mus)
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grad[~present], 0.0)


def test_gaussian_kl_and_reparameterisation():
  rng = np.random.default_rng(1)
  mu, logvar = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  var = np.exp(logvar)
  expected = (np.log(1.0 / np.sqrt(var)) + (var + mu**2) / 2 - 0.5).sum(-1)  # KL(N(mu, var) || N(0, 1))
  np.testing.assert_allclose(mvae.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar)), expected, rtol=1e-5)
  np.testing.assert_allclose(mvae.gaussian_kl(jnp.zeros((1, 3)), jnp.zeros((1, 3))), 0.0, atol=1e-7)
  key = jax.random.PRNGKey(0)
  z = mvae.reparameterize(key, jnp.full((20000, 2), 1.5), jnp.full((20000, 2), np.log(0.25)))
  np.testing.assert_allclose(z.mean(0), 1.5, atol=0.02)
  np.testing.assert_allclose(z.std(0), 0.5, atol=0.02)
  cold = mvae.reparameterize(key, jnp.full((3, 2), 1.5), jnp.zeros((3, 2)), temperature=0.0)
  np.testing.assert_array_equal(cold, 1.5)


def test_discretized_gaussian_is_a_distribution_over_the_levels():
  levels = np.arange(256) * (2.0 / 255.0) - 1.0
  for mean, std in ((0.3, 0.1), (-0.9, 0.02), (0.0, 1.5)):
    log_p = np.asarray(
      decoders.discretized_gaussian_log_likelihood(jnp.asarray(levels, jnp.float32), mean, np.log(std))
    )
    edges = np.concatenate([[-np.inf], (levels[:-1] + levels[1:]) / 2, [np.inf]])
    lower, upper = edges[:-1], edges[1:]
    expected = np.where(  # In float64, from the side of the mean where the subtraction is exact enough.
      lower >= mean,
      stats.norm.sf(lower, mean, std) - stats.norm.sf(upper, mean, std),
      stats.norm.cdf(upper, mean, std) - stats.norm.cdf(lower, mean, std),
    )
    big = expected > 1e-30
    np.testing.assert_allclose(log_p[big], np.log(expected[big]), rtol=2e-3, atol=2e-4)
    assert abs(np.exp(log_p.astype(np.float64)).sum() - 1.0) < 1e-3
  # Far from the mean: finite log-probability and gradient (no clamping that would stop learning).
  value, grad = jax.value_and_grad(
    lambda m: decoders.discretized_gaussian_log_likelihood(0.9, m, np.log(0.01))
  )(-0.9)
  assert np.isfinite(value) and value < -1000 and np.isfinite(grad) and grad > 0


def test_token_likelihood_scores_real_tokens_and_the_end():
  decoder = decoders.LSTMDecoder(vocab_size=7, max_tokens=5, embed_dim=4, hidden=8)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  tokens = np.array([[3, 1, 4, 0, 0], [2, 6, 5, 1, 2]], np.int32)
  mask = tokens != 0
  params = decoder.init(jax.random.PRNGKey(1), z, tokens, mask, method=decoder.log_likelihood)
  logits = np.asarray(decoder.apply(params, z, tokens, mask), np.float64)
  assert logits.shape == (2, 5, 7)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = [
    sum(log_softmax[0, t, tokens[0, t]] for t in range(3)) + log_softmax[0, 3, 0],  # 3 tokens + the end.
    sum(log_softmax[1, t, tokens[1, t]] for t in range(5)),  # Full length: no end fits.
  ]
  np.testing.assert_allclose(
    decoder.apply(params, z, tokens, mask, method=decoder.log_likelihood), expected, rtol=1e-5
  )
  # Teacher forcing: step t sees tokens before t only, so changing token 2 leaves steps 0-2 unchanged.
  changed = tokens.copy()
  changed[:, 2] = 1
  np.testing.assert_allclose(
    decoder.apply(params, z, changed, mask)[:, :3], logits[:, :3], rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  ("shape", "widths"), [((32, 32, 3), (16, 8)), ((28, 28, 1), (8, 4)), ((112, 112, 1), (8, 4, 4, 4))]
)
def test_deconv_decoder_shapes(shape, widths):
  decoder = decoders.DeconvDecoder(shape=shape, widths=widths, learn_std=True)
  z = jnp.ones((2, 6))
  params = decoder.init(jax.random.PRNGKey(0), z)
  mean, log_std = decoder.apply(params, z)
  assert mean.shape == (2, *shape) and np.abs(mean).max() <= 1.0
  assert float(log_std) == pytest.approx(np.log(0.1)) and "log_std" in params["params"]
  x = jnp.zeros((2, *shape))
  assert decoder.apply(params, z, x, method=decoder.log_likelihood).shape == (2,)
  with pytest.raises(ConfigError, match="not divisible"):
    decoders.DeconvDecoder(shape=(30, 30, 1), widths=(8, 4)).init(jax.random.PRNGKey(0), z)


def test_translate_moves_images_by_whole_and_fractional_pixels():
  image = np.zeros((3, 8, 8, 2), np.float32)
  image[:, 3, 2] = [1.0, -1.0]
  moved = np.asarray(decoders.translate(jnp.asarray(image), jnp.array([[0.0, 0.0], [1.0, 2.0], [0.5, 0.0]])))
  np.testing.assert_allclose(moved[0], image[0], atol=1e-6)  # No shift: the identity.
  np.testing.assert_allclose(moved[1], np.roll(image[1], (2, 1), axis=(0, 1)), atol=1e-6)  # dy 2, dx 1.
  np.testing.assert_allclose(moved[2, 3, 2:4], [[0.5, -0.5], [0.5, -0.5]], atol=1e-6)  # Half a pixel.
  assert moved[2].sum() == pytest.approx(0.0, abs=1e-6) and np.abs(moved[2]).sum() == pytest.approx(2.0)
  edge = np.asarray(decoders.translate(jnp.arange(4.0).reshape(1, 1, 4, 1), jnp.array([[-1.5, 0.0]])))
  np.testing.assert_allclose(edge.ravel(), [1.5, 2.5, 3.0, 3.0])  # Reads past the edge: the edge pixel.


def test_translating_deconv_decoder_reads_its_last_two_inputs_as_a_shift():
  decoder = decoders.DeconvDecoder(shape=(16, 16, 3), widths=(8, 4), translate=True)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 6))
  params = decoder.init(jax.random.PRNGKey(1), z)
  np.testing.assert_allclose(params["params"]["shift_log_scale"], np.log([2.0, 2.0]))
  assert params["params"]["project"]["kernel"].shape[0] == 4  # The shift is no feature.
  centred, _ = decoder.apply(params, z.at[:, 4:].set(0.0))
  for w in ([0.05, -0.1], [0.5, -20.0]):  # 2 pixels per unit, bounded by 4: 4 tanh(2 w / 4).
    moved, _ = decoder.apply(params, z.at[:, 4:].set(jnp.array(w)))
    pixels = 4.0 * np.tanh(np.array(w) / 2.0)
    np.testing.assert_allclose(moved, decoders.translate(centred, jnp.array([pixels] * 2)), atol=1e-6)
  assert pixels[1] == pytest.approx(-4.0)


def test_token_decoder_generates_masked_prefixes():
  decoder = decoders.LSTMDecoder(vocab_size=5, max_tokens=6, embed_dim=4, hidden=8)
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
  params = decoder.init(jax.random.PRNGKey(1), z, jnp.ones((16, 6), jnp.int32))
  tokens, mask = decoder.apply(params, z, jax.random.PRNGKey(2), 1.0, method=decoder.generate)
  assert tokens.shape == mask.shape == (16, 6) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(mask, tokens != 0)
  np.testing.assert_array_equal(
    np.asarray(mask), np.cumprod(np.asarray(mask), axis=1).astype(bool)
  )  # Prefix.
  greedy = [decoder.apply(params, z, jax.random.PRNGKey(k), 0.0, method=decoder.generate)[0] for k in (3, 4)]
  np.testing.assert_array_equal(greedy[0], greedy[1])  # Temperature 0 ignores the key.


def test_kl_weight_warms_up_linearly():
  assert [float(kl_weight(s, 2.0, 4)) for s in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
  assert float(kl_weight(None, 2.0, 4)) == 2.0 and float(kl_weight(3, 2.0, 0)) == 2.0


# ---- The task: loss, sampling, imputation ----


def test_loss_is_the_negative_sub_sampled_elbo(task_and_batch):
  task, batch, params = task_and_batch
  # configs/mvae/mmshapes.py, which the tiny config extends, turns cross-reconstruction on.
  assert [(s.name, s.reconstruct) for s in task.subsets] == [
    (name, ("image", "text")) for name in ("joint", "from_image", "from_text")
  ]
  loss, metrics, _ = jax.jit(task.loss)(params, batch, jax.random.PRNGKey(3))
  m = {k: float(v) for k, v in metrics.items()}
  assert m["loss"] == pytest.approx(float(loss)) and 0 < m["loss"] < np.inf
  assert m["elbo"] == m["joint/elbo"] < 0  # Likelihoods of stored levels and tokens: a bound <= 0.
  assert m["joint/elbo"] == pytest.approx(
    m["joint/recon_image"] + m["joint/recon_text"] - m["joint/kl"], rel=1e-5
  )
  assert m["from_text/elbo"] == pytest.approx(
    m["from_text/recon_text"] + m["from_text/recon_image"] - m["from_text/kl"], rel=1e-5
  )
  total = sum(m[f"{s}/elbo"] for s in ("joint", "from_image", "from_text"))
  assert m["loss"] == pytest.approx(-total, rel=1e-4)  # Unit weights, final KL weight (no step given).


def test_without_cross_reconstruction_each_single_term_scores_its_own_modality():
  subsets = mvae_task.elbo_subsets(("text", "image"), joint=True, unimodal=True, cross=False)
  assert [(s.name, s.posterior, s.reconstruct, s.weight) for s in subsets] == [
    ("joint", ("image", "text"), ("image", "text"), 1.0),
    ("from_image", ("image",), ("image",), 1.0),
    ("from_text", ("text",), ("text",), 1.0),
  ]
  reported_only = mvae_task.elbo_subsets(("image",), joint=False, unimodal=True, cross=True)
  assert [(s.name, s.weight) for s in reported_only] == [("joint", 0.0)]  # One modality: no sub-sampling.


def test_private_latent_is_the_image_encoders_own_and_its_kl_is_never_annealed(
  task_and_batch, retrieval_tiny_data
):
  """The tiny config's image has a 2-wide private latent (configs/mvae/mmshapes.py); the text has none."""
  task, batch, params = task_and_batch
  assert task.private_dims == {"image": 2, "text": 0}
  shared, private = jax.jit(task.experts)(params, batch)  # Jitted: faster than compiling op by op.
  assert {m: mu.shape for m, (mu, _) in shared.items()} == {"image": (8, 8), "text": (8, 8)}
  assert {m: mu.shape for m, (mu, _) in private.items()} == {"image": (8, 2)}
  mu, logvar = private["image"]
  expected_kl = float(mvae.gaussian_kl(mu, logvar).mean())
  _, metrics, _ = jax.jit(task.loss)(params, batch, jax.random.PRNGKey(3), step=0)  # Shared KL weight 0 at 0.
  m = {k: float(v) for k, v in metrics.items()}
  assert float(metrics["kl_weight"]) == 0.0 and "from_text/kl_private_text" not in m
  for subset in ("joint", "from_image", "from_text"):  # Every subset reconstructs the image.
    assert m[f"{subset}/kl_private_image"] == pytest.approx(expected_kl, rel=1e-5) and expected_kl > 0
  recon = sum(m[f"{s}/recon_{x}"] for s in ("joint", "from_image", "from_text") for x in ("image", "text"))
  assert m["loss"] == pytest.approx(-(recon - 3 * expected_kl), rel=1e-5)
  # Without private latents the encoders are latent_dim wide and no subset has a private KL.
  config = tiny_config(retrieval_tiny_data[0])
  config.mvae.private_dims.image = 0
  config.mvae.decoders.image.translate = False
  plain = TASKS.get("mvae")(config, vocab_size=VOCAB)
  plain_params = jax.eval_shape(plain.init, jax.random.PRNGKey(0), batch)
  assert plain_params["params"]["encoder_image"]["mu"]["kernel"].shape[-1] == 8
  assert params["params"]["encoder_image"]["mu"]["kernel"].shape[-1] == 10
  assert not [
    k for k in jax.eval_shape(plain.loss, plain_params, batch, jax.random.PRNGKey(3))[1] if "private" in k
  ]


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_step_reaches_the_loss_through_train_step(task_and_batch, retrieval_tiny_data):
  """train_step passes the step to every task's loss: the KL weight warms up over 20 steps."""
  task, batch, params = task_and_batch
  config = tiny_config(retrieval_tiny_data[0])
  tx = optim.make_optimizer(config.optimizer, 100)
  par = parallel_lib.DataParallel("shard_map")
  state = par.place_state(TrainState.create(params, tx, jax.random.PRNGKey(1)))
  step = par.map(functools.partial(train_step, task=task, tx=tx, par=par), sharded_args=(1,))
  weights = []
  for _ in range(3):
    state, metrics = step(state, par.shard(batch))
    weights.append(float(metrics["kl_weight"]))
  np.testing.assert_allclose(weights, [0.0, 0.05, 0.1], atol=1e-7)


def test_sampling_is_deterministic_under_a_fixed_key(task_and_batch):
  task, batch, params = task_and_batch
  for target, condition in (("image", "text"), ("text", "image")):
    sample = jax.jit(task.sample, static_argnames=("condition", "target", "num_samples"))
    draw = functools.partial(sample, params, batch, condition=(condition,), target=target, num_samples=3)
    first, mask = draw(jax.random.PRNGKey(0), 1.0)
    again, _ = draw(jax.random.PRNGKey(0), 1.0)
    other, _ = draw(jax.random.PRNGKey(1), 1.0)
    assert first.shape[:2] == (8, 3) and first.shape[2:] == batch[target].shape[1:]
    assert (mask is None) == (target == "image")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_impute_keeps_present_inputs_and_fills_absent_ones(task_and_batch):
  task, batch, params = task_and_batch
  present = {"image": np.array([True] * 4 + [False] * 4), "text": np.array([False, True] * 4)}
  out = jax.jit(task.impute)(params, batch, present, jax.random.PRNGKey(0))
  assert set(out) == set(batch)
  for m in ("image", "text", "text_mask"):
    assert out[m].shape == batch[m].shape and out[m].dtype == batch[m].dtype
  np.testing.assert_array_equal(out["image"][:4], batch["image"][:4])
  np.testing.assert_array_equal(out["text"][1::2], batch["text"][1::2])
  np.testing.assert_array_equal(out["text_mask"][1::2], batch["text_mask"][1::2])
  assert not np.array_equal(out["image"][4:], batch["image"][4:]) and np.abs(out["image"]).max() <= 1.0
  np.testing.assert_array_equal(out["text_mask"], out["text"] != 0)
  np.testing.assert_array_equal(out["label"], batch["label"])
  # A modality missing from the batch altogether is decoded for every example.
  images_only = {k: batch[k] for k in ("image", "label")}
  impute = jax.jit(task.impute, static_argnames="targets")
  filled = impute(params, images_only, {"image": np.ones(8, bool)}, jax.random.PRNGKey(1), 0.0)
  assert filled["text"].shape == (8, 16) and filled["text_mask"].shape == (8, 16)
  # `targets` decodes only those modalities: the others come back as they were, absent rows included.
  only_image = impute(params, batch, present, jax.random.PRNGKey(0), targets=("image",))
  np.testing.assert_array_equal(only_image["image"][:4], batch["image"][:4])  # Present: copied.
  # Imputed: the same z and decoder, but another program (XLA may block its kernels differently).
  np.testing.assert_allclose(only_image["image"][4:], out["image"][4:], rtol=0, atol=1e-6)
  for m in ("text", "text_mask"):
    np.testing.assert_array_equal(only_image[m], batch[m])


def example_keys(seed, size):
  """Per-example keys as the trainer makes them on one device: fold_in(key, index in the batch)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(size))


def test_rngs_draw_row_i_from_key_i():
  keys = example_keys(0, 3)
  logits = jnp.log(jnp.array([[0.2, 0.3, 0.5]] * 3))
  np.testing.assert_array_equal(
    rngs.categorical(keys, logits),
    [jax.random.categorical(k, row) for k, row in zip(keys, logits, strict=True)],
  )
  np.testing.assert_array_equal(
    rngs.normal(keys, (3, 2)), np.stack([jax.random.normal(k, (2,)) for k in keys])
  )
  split = rngs.per_sample(keys, 2)  # Example-major: rows 2i, 2i + 1 are example i's.
  assert split.shape == (6, 2)
  np.testing.assert_array_equal(split[2:4], jax.random.split(keys[1], 2))
  single = jax.random.PRNGKey(4)  # A single key draws as jax.random does.
  assert rngs.per_sample(single, 2) is single
  np.testing.assert_array_equal(rngs.categorical(single, logits), jax.random.categorical(single, logits))
  with pytest.raises(ValueError, match="3 example keys for 2 rows"):
    rngs.categorical(keys, logits[:2])


@pytest.mark.e2e  # Seconds of training or restoring: the full suite, not the fast tier.
def test_an_examples_draws_depend_on_its_own_key_only(task_and_batch):
  """With per-example keys (the trainer's and evaluator's), an example's z, private latents and samples do
  not depend on which other examples share its batch: what makes a run independent of the device count."""
  task, batch, params = task_and_batch
  keys, other_keys = example_keys(5, 8), example_keys(6, 8)
  first_half = {k: v[:4] for k, v in batch.items()}
  terms = jax.jit(lambda b, k: task.elbo_terms(params, b, k, 1.0)[1])
  full, half, other = terms(batch, keys), terms(first_half, keys[:4]), terms(batch, other_keys)
  for name in full:  # Per-example metrics, -60,000 nats or so: other keys change them by ~1%.
    np.testing.assert_allclose(half[name], full[name][:4], rtol=1e-5, atol=1e-3, err_msg=name)
  assert not np.allclose(other["joint/recon_image"], full["joint/recon_image"], rtol=1e-3)
  # Samples: each example's key is split into one per sample (tokens: one categorical draw per row).
  sample = jax.jit(task.sample, static_argnames=("condition", "target", "num_samples"))
  draw = functools.partial(sample, params, condition=("image",), target="text", num_samples=3)
  (tokens, mask), (tokens_half, mask_half) = draw(batch, keys, 1.0), draw(first_half, keys[:4], 1.0)
  assert tokens.shape == (8, 3, 16) and not np.array_equal(tokens[:, 0], tokens[:, 1])  # Samples differ.
  np.testing.assert_array_equal(tokens_half, tokens[:4])  # Discrete: exact.
  np.testing.assert_array_equal(mask_half, mask[:4])
  present = {"image": np.array([True, False] * 4), "text": np.array([False, False, True, True] * 2)}
  impute = jax.jit(task.impute, static_argnames="targets")
  filled = impute(params, batch, present, keys, targets=("image",))
  filled_half = impute(
    params, first_half, {m: p[:4] for m, p in present.items()}, keys[:4], targets=("image",)
  )
  np.testing.assert_allclose(filled_half["image"], filled["image"][:4], rtol=0, atol=1e-6)  # Via convs.
  np.testing.assert_array_equal(filled["image"][::2], batch["image"][::2])  # Present inputs: copied.
  assert not np.allclose(filled["image"][1::2], batch["image"][1::2])


@pytest.mark.e2e
def test_training_and_evaluation_agree_on_1_and_4_devices(retrieval_tiny_data):
  """The MVAE is stochastic: with one random stream per device, 10 steps on 4 devices trained parameters
  2.6e-2 away from 1 device's (a step's loss 15% off, the evaluation's ELBO sums 1.9e-3 off; measured with
  `tests/mvae_multidevice_check.py --control`). Keyed by the example's global index, they agree to float
  rounding, which Adam amplifies over the steps: measured 5.7e-5 (parameters), 2.1e-6 (a step's relative
  loss), 1.1e-7 (relative evaluation sums). `pmap` (with `--pmap`) gives the same numbers as `shard_map`."""
  result = run_python(
    ["tests/tasks/mvae_multidevice_check.py", retrieval_tiny_data[0]],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs["moved"] > 5e-3  # The steps really changed the parameters...
  assert diffs["shard_map/params"] < 1e-3  # ...the same way on 1 and 4 devices (tolerance: see above),
  assert diffs["shard_map/loss"] < 1e-4  # step by step,
  assert diffs["eval/sums"] < 1e-5  # and evaluation draws the same z for each example.
  assert -np.inf < diffs["eval/elbo"] < 0


def test_config_errors_are_named(retrieval_tiny_data):
  directory, _, info = retrieval_tiny_data
  config = tiny_config(directory)
  config.mvae.latent_dim = 0
  with pytest.raises(ConfigError, match="latent_dim must be positive"):
    config_checks.check(config)
  config = tiny_config(directory)
  del config.mvae.decoders["text"]
  with pytest.raises(ConfigError, match=r"decoders.text names no 'decoder'"):
    config_checks.check(config)
  config = tiny_config(directory)
  config.mvae.likelihood_weights.text = -1.0
  with pytest.raises(ConfigError, match="likelihood_weights.text must be a number >= 0"):
    config_checks.check(config)
  config = tiny_config(directory)
  config.mvae.private_dims.image = -2
  with pytest.raises(ConfigError, match="private_dims.image must be an integer >= 0, got -2"):
    config_checks.check(config)
  config = tiny_config(directory)
  config.mvae.private_dims.image = 3
  with pytest.raises(
    ConfigError, match=r"image.translate reads a 2-wide private latent \(dx, dy\); .*private_dims.image is 3"
  ):
    TASKS.get("mvae")(config, info=info, vocab_size=VOCAB)
  config = tiny_config(directory)
  config.mvae.decoders.image.shape = (28, 28, 1)
  with pytest.raises(ConfigError, match=r"shape is \(28, 28, 1\), the dataset's image is \(32, 32, 3\)"):
    TASKS.get("mvae")(config, info=info, vocab_size=VOCAB)


# ---- Coherence and image metrics ----


def test_coherence_with_a_fake_judge():
  labels = np.arange(16) % 16
  images = np.zeros((16, 4, 4, 3), np.float32) + labels[:, None, None, None]  # Pixel value = label.
  wrong = labels.copy()
  wrong[:4] = (labels[:4] + 1) % 16  # 4 of 16 generated with the next label: the colour is wrong.
  judged = images + (wrong - labels)[:, None, None, None]

  def judge_fn(x):  # (logits, penultimate features), as the coherence evaluator's judge returns them.
    pixel = np.asarray(x)[:, 0, 0, 0]
    return jax.nn.one_hot(pixel.astype(int), 16), pixel[:, None]

  read, features = coherence.judge(judged, judge_fn, batch_size=5)  # Batches of 5: 16 images in 4 calls.
  np.testing.assert_array_equal(read, wrong)
  np.testing.assert_array_equal(features[:, 0], wrong)
  assert generation_metrics.agreement(read, labels, "mmshapes")["label"] == 0.75
  # mmshapes labels are shape * 4 + colour: label + 1 keeps the shape unless the colour wraps around.
  agree = generation_metrics.agreement(wrong, labels, "mmshapes")
  assert agree == {"label": 0.75, "shape": 1 - 1 / 16, "colour": 0.75}


def test_image_metrics_are_saved_as_png_and_tensorboard_images(tmp_path):
  grid = sample_grid(np.zeros((2, 8, 8, 1)), np.ones((2, 3, 8, 8, 1)) * 0.5)
  assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 66, 2 + 4 * 66, 3)  # 8 px tiles -> 64.
  writer = MetricWriter(str(tmp_path))
  writer.write(3, {"test/elbo": -1.0, "test/samples/text_to_image": Image(grid)})
  writer.close()
  saved = np.asarray(PILImage.open(tmp_path / "test_samples_text_to_image.png"))
  np.testing.assert_array_equal(saved, grid)
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "test/elbo": -1.0}
  with pytest.raises(ValueError, match="uint8"):
    Image(np.zeros((4, 4, 3), np.float32))


# ---- A tiny run: the ELBO rises, grids are written, the CLI generates from it ----


@pytest.fixture
def trained_run(mvae_tiny_run):
  return mvae_tiny_run


@pytest.mark.e2e
def test_training_raises_the_elbo_and_writes_sample_grids(trained_run):
  workdir, results = trained_run
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_elbo = {line["step"]: line["train/elbo"] for line in lines if "train/elbo" in line}
  assert sorted(train_elbo) == [10, 20, 30, 40]
  # Nats per example (seed 0): train -90,500 at step 10 -> -31,900 at 40; test -35,700 at 20 -> -32,300 at 40.
  assert train_elbo[40] > train_elbo[10] + 1000, train_elbo
  weights = [line["train/kl_weight"] for line in lines if "train/kl_weight" in line]
  assert weights[0] < 0.5 and weights[-1] == 1.0  # Annealed over the first 20 steps.
  test_elbo = {line["step"]: line["test/elbo"] for line in lines if "test/elbo" in line}
  assert sorted(test_elbo) == [20, 40]  # Every eval_every_steps, and at the end.
  assert test_elbo[40] > test_elbo[20], test_elbo
  assert results["test/elbo"] == pytest.approx(test_elbo[40])
  for split in ("validation", "test"):
    assert -np.inf < results[f"{split}/elbo"] < 0
    grid = results[f"{split}/samples/text_to_image"]
    assert isinstance(grid, Image) and grid.pixels.shape == (2 + 4 * 66, 2 + 4 * 66, 3)  # 4 rows: real + 3.
    assert (workdir / f"{split}_samples_text_to_image.png").stat().st_size > 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))


def generate(workdir, *flags):
  return run_python(["scripts/generate.py", f"--workdir={workdir}", *flags])


@pytest.mark.e2e
def test_generate_writes_a_png_grid_from_a_caption_or_an_example(trained_run, tmp_path):
  workdir, _ = trained_run
  for flag in ("--caption=a small blue triangle", "--index=3"):
    grid = tmp_path / "grid.png"
    result = generate(workdir, flag, "--num=4", "--temperature=0.5", f"--output={grid}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 1000
    grid.unlink()


def test_generate_reports_user_errors_in_one_line(capsys, retrieval_tiny_data, tmp_path):
  """Each mistake is found from the run's config alone, before any checkpoint is read."""
  workdir = tmp_path / "mvae"
  workdir.mkdir()
  write_config(str(workdir), tiny_config(retrieval_tiny_data[0]))
  generate = functools.partial(main_in_process, capsys=capsys, script="scripts/generate.py")
  status, stderr = generate([f"--workdir={workdir}", "--caption=a purple triangle"])
  assert status == 1
  assert "error: DataError: unknown word 'purple'" in stderr and "Traceback" not in stderr
  status, stderr = generate([f"--workdir={tmp_path / 'nowhere'}", "--caption=a red circle"])
  assert status == 1 and "config.json is missing" in stderr
  config = json.loads((workdir / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "task": "classification"}))
  status, stderr = generate([f"--workdir={tmp_path}", "--caption=a red circle"])  # A classifier's run.
  assert status == 1 and "is a 'classification' run" in stderr
  status, stderr = generate([f"--workdir={workdir}", "--caption=a red circle", "--sampler=heun"])
  assert status == 1 and "--sampler apply to flow runs" in stderr
  status, stderr = generate([f"--workdir={workdir}", "--caption=a red circle", "--num_examples=5"])
  assert status == 1 and "--num_examples applies to --judge" in stderr


@pytest.mark.e2e
def test_coherence_cli_judges_generated_images(trained_run, retrieval_tiny_data, tmp_path):
  workdir, _ = trained_run
  from configs.mvae import judge_mmshapes

  config = judge_mmshapes.get_config()
  config.dataset.update(config="retrieval_tiny", data_dir=retrieval_tiny_data[0], eval_splits=("test",))
  config.model.modalities.image.update(widths=(8,), dense=16)
  config.update(
    num_train_steps=4, batch_size=32, eval_batch_size=128, log_every_steps=2, checkpoint_every_steps=4
  )
  loop.train_and_evaluate(config, str(tmp_path / "judge"))
  result = generate(workdir, f"--judge={tmp_path / 'judge'}")
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / "coherence.json").read_text())
  assert record["examples"] == 256
  assert set(record["sampling_ms_per_image"]) == {"text_to_image", "image_to_image"}
  for key in (
    "judge/test/label",
    "coherence/test/text_to_image/label",
    "coherence/test/text_to_image/colour",
    "coherence/test/image_to_image/label",
  ):
    assert 0.0 <= record[key] <= 1.0
  assert "coherence/test/text_to_image/shape" in result.stdout
