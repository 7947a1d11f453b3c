"""Mixed precision, BatchNorm and dropout on the model side: dtypes, tolerances, statistics, RNG use."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmlearn.config import schema
from mmlearn.errors import ConfigError
from mmlearn.models.avmnist_encoders import LeNet, SpectrogramLSTM
from mmlearn.models.classifier import build_classifier
from mmlearn.models.config import compute_dtype
from mmlearn.models.dual_encoder import DualEncoder
from mmlearn.models.encoders import ImageCNN, TextLSTM
from mmlearn.models.mvae import MVAE
from mmlearn.tasks.classification import MODEL_KEYS

VOCAB, TOKENS, CLASSES = 40, 16, 8


def mmshapes_batch(batch_size=4, seed=0):
  """A batch as the pipeline gives it: uint8 images scaled to [-1, 1], right-padded tokens with a mask."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, TOKENS + 1, batch_size)
  mask = np.arange(TOKENS)[None, :] < lengths[:, None]
  return {
    "image": rng.integers(0, 256, (batch_size, 32, 32, 3)).astype(np.float32) * (2 / 255) - 1,
    "text": np.where(mask, rng.integers(1, VOCAB, (batch_size, TOKENS)), 0).astype(np.int32),
    "text_mask": mask,
    "label": rng.integers(0, CLASSES, batch_size).astype(np.int32),
  }


def float32_leaves(tree) -> bool:
  return {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


def assert_bf16_close(f32_model, bf16_model, args, *, atol, rtol=0.0, **kwargs):
  """Applies both models to the float32 model's params; returns the largest deviation (for the report)."""
  # Jitted: one compilation per model is faster on CPU than dispatching every op of an eager apply.
  variables = jax.jit(lambda key: f32_model.init(key, *args, **kwargs))(jax.random.key(0))
  bf16_variables = jax.eval_shape(lambda: bf16_model.init(jax.random.key(0), *args, **kwargs))  # No compile.
  # Parameters are float32 whatever the compute dtype: one checkpoint serves both precisions.
  assert float32_leaves(variables) and float32_leaves(bf16_variables)
  assert jax.tree.structure(bf16_variables) == jax.tree.structure(variables)
  want = jax.tree.leaves(jax.jit(lambda v: f32_model.apply(v, *args, **kwargs))(variables))
  got = jax.tree.leaves(jax.jit(lambda v: bf16_model.apply(v, *args, **kwargs))(variables))
  deviation = 0.0
  for w, g in zip(want, got, strict=True):
    assert g.dtype == jnp.float32 and w.dtype == jnp.float32  # Losses and metrics reduce in float32.
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)
    deviation = max(deviation, float(np.abs(np.asarray(g) - np.asarray(w)).max()))
  assert deviation > 0  # Not trivially equal: the computation did run in bfloat16.
  return deviation


# --- Precision ------------------------------------------------------------------------------------------


def test_compute_dtype_maps_the_config_precision():
  assert compute_dtype("float32") == jnp.float32 and compute_dtype("bfloat16") == jnp.bfloat16
  with pytest.raises(ConfigError, match="unknown precision 'float16'; known: float32, bfloat16"):
    compute_dtype("float16")


def test_default_classifier_in_bfloat16_stays_near_float32():
  """The default model's logits in bfloat16 are within 0.05 of float32 on the same float32 params.

  bfloat16 keeps 8 significant bits (a relative rounding error of 2^-9 per operation). At init the
  logits are O(0.1-1); the rounding of the input, two convs, 16 LSTM steps (whose carry stays float32)
  and three dense layers compounds to at most 0.005 (measured: 0.003 here, 0.0026-0.0049 over four init
  seeds on 16 examples), so 0.05 is a 10x margin that still catches a layer losing its precision.
  """
  config = default_classifier()
  build = lambda dtype: build_classifier(config, num_classes=CLASSES, vocab_size=VOCAB, dtype=dtype)  # noqa: E731
  assert_bf16_close(build(jnp.float32), build(jnp.bfloat16), (mmshapes_batch(),), atol=0.05)


def test_transformer_towers_in_bfloat16_stay_near_float32():
  """ViT + text Transformer dual encoder: bfloat16 unit embeddings within 0.02 of float32 (each entry).

  The embeddings are L2-normalised in float32 (entries O(0.1) for 32 dims); the towers' LayerNorm
  outputs carry a relative error of about 2^-9 per rounding, and two blocks plus the projection put
  the largest entry difference at 0.004 (measured), so 0.02 is a 5x margin.
  """
  towers = {
    "image": {"encoder": "vit", "patch": 8, "width": 32, "depth": 2, "heads": 4, "mlp_dim": 64},
    "text": {
      "encoder": "transformer",
      "vocab_size": VOCAB,
      "width": 32,
      "depth": 2,
      "heads": 4,
      "mlp_dim": 64,
    },
  }
  build = lambda dtype: DualEncoder(towers, embed_dim=32, log_scale_init=2.0, dtype=dtype)  # noqa: E731
  assert_bf16_close(build(jnp.float32), build(jnp.bfloat16), (mmshapes_batch(),), atol=0.02)


def test_mvae_in_bfloat16_returns_float32_likelihoods():
  """Experts and decoders compute in bfloat16, their distributions (and so the log-likelihoods) are float32.

  A log-likelihood sums one term per pixel / token, so its tolerance is relative: 1% of its magnitude.
  """
  batch = mmshapes_batch(2)
  batch = {
    "image": batch["image"][:, :8, :8],
    "text": batch["text"][:, :4],
    "text_mask": batch["text_mask"][:, :4],
  }
  encoders = {
    "image": {"encoder": "cnn", "widths": (4,), "dense": 8},
    "text": {"encoder": "lstm", "hidden": 8},
  }
  encoders["text"]["vocab_size"] = VOCAB
  decoders = {
    "image": {"decoder": "deconv", "shape": (8, 8, 3), "widths": (8, 4)},
    "text": {"decoder": "lstm", "vocab_size": VOCAB, "max_tokens": 4, "hidden": 8},
  }
  build = lambda dtype: MVAE(encoders, decoders, latent_dim=4, dtype=dtype)  # noqa: E731
  assert_bf16_close(build(jnp.float32), build(jnp.bfloat16), (batch,), atol=0.0, rtol=0.01)


# --- BatchNorm ------------------------------------------------------------------------------------------


def test_lenet_with_batch_norm_has_multibench_layers():
  """LeNet(1, 6, 3) of MultiBench: bias-free convs 5x5x1x6, 3x3x6x12, 3x3x12x24, 3x3x24x48, each with a
  BatchNorm2d; 13,938 parameters (`sum(p.numel() for p in LeNet(1, 6, 3).parameters())` in PyTorch)."""
  x = np.zeros((2, 28, 28, 1), np.float32)
  variables = jax.eval_shape(LeNet(channels=6, num_layers=3, batch_norm=True).init, jax.random.key(0), x)
  params, stats = variables["params"], variables["batch_stats"]
  widths = [6, 12, 24, 48]
  assert sorted(params) == sorted([f"conv{i}" for i in range(4)] + [f"bn{i}" for i in range(4)])
  for i, width in enumerate(widths):
    assert set(params[f"conv{i}"]) == {"kernel"}  # bias=False, as the reference.
    assert params[f"conv{i}"]["kernel"].shape == ((5, 5, 1, 6) if i == 0 else (3, 3, widths[i - 1], width))
    assert {k: v.shape for k, v in params[f"bn{i}"].items()} == {"scale": (width,), "bias": (width,)}
    assert {k: v.shape for k, v in stats[f"bn{i}"].items()} == {"mean": (width,), "var": (width,)}
  assert sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)) == 13938


@pytest.mark.parametrize(
  "module",
  [
    ImageCNN(widths=(4, 8), dense=6),
    LeNet(channels=2, num_layers=1, batch_norm=False),
    TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, dense=3),
    SpectrogramLSTM(hidden=4, project=3),
  ],
  ids=lambda m: type(m).__name__,
)
def test_features_off_keep_the_parameter_tree(module):
  """Existing checkpoints still load: dropout adds no variables, batch_norm=False no bn layers or stats."""
  inputs = (
    (mmshapes_batch(2)["text"],) if isinstance(module, TextLSTM) else (np.zeros((2, 8, 8, 1), np.float32),)
  )
  variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)  # Shapes only: nothing to compile.
  assert set(variables) == {"params"}
  assert not any("bn" in name for name in variables["params"])
  with_dropout = jax.eval_shape(module.clone(dropout=0.5).init, jax.random.key(0), *inputs)
  assert jax.tree.structure(with_dropout) == jax.tree.structure(variables)
  if hasattr(module, "batch_norm"):
    assert all("bias" in variables["params"][f"conv{i}"] for i in range(2))


@pytest.mark.parametrize(
  "module",
  [LeNet(channels=2, num_layers=1, batch_norm=False), ImageCNN(widths=(3, 4), dense=5)],
  ids=["lenet", "cnn"],
)
def test_batch_norm_trains_on_batch_statistics_and_evaluates_on_running_ones(module):
  module = module.clone(batch_norm=True, batch_norm_axis=None)
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1)) * 3 + 2
  variables = module.init(jax.random.key(0), x)
  assert float32_leaves(variables["batch_stats"])

  out, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
  stats = updates["batch_stats"]
  assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
  changed = jax.tree.map(lambda new, old: not np.allclose(new, old), stats, variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Training normalises with the batch's statistics: an example's features depend on the others.
  alone, _ = module.apply(variables, x[:3], train=True, mutable=["batch_stats"])
  assert not np.allclose(alone, out[:3], atol=1e-5)

  # Evaluation uses the running statistics, updates nothing, and each example is encoded on its own.
  trained = {**variables, "batch_stats": stats}
  evaluated = module.apply(trained, x)
  np.testing.assert_allclose(module.apply(trained, x[:3]), evaluated[:3], rtol=1e-5, atol=1e-6)
  assert not np.allclose(evaluated, module.apply(variables, x), atol=1e-5)  # It reads the stats it is given.


def test_batch_norm_running_mean_follows_the_pytorch_momentum():
  """New running mean = 0.9 * old + 0.1 * batch mean (PyTorch's momentum 0.1), per channel."""
  module = LeNet(channels=2, num_layers=0, batch_norm=True, batch_norm_axis=None)
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, 1)) + 1.5
  variables = module.init(jax.random.key(0), x)
  _, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
  conv = jax.lax.conv_general_dilated(
    x, variables["params"]["conv0"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["mean"], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4)
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["var"], 0.9 + 0.1 * conv.var((0, 1, 2)), rtol=1e-4)


def test_batch_norm_over_split_batches_equals_one_device_on_the_whole_batch():
  """With `batch_norm_axis="batch"`, mapping over 4 shards of the batch (vmap binds the axis as the
  trainer's shard_map/pmap does) gives the whole batch's outputs and statistics."""
  module = LeNet(channels=2, num_layers=1, batch_norm=True)
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1)) * 2 + 1
  variables = module.init(jax.random.key(0), x)  # Init never reduces over the axis.
  want, want_updates = module.clone(batch_norm_axis=None).apply(
    variables, x, train=True, mutable=["batch_stats"]
  )

  def shard(x_shard):
    return module.apply(variables, x_shard, train=True, mutable=["batch_stats"])

  shards = x.reshape(4, 2, *x.shape[1:])
  got, got_updates = jax.vmap(shard, axis_name="batch")(shards)
  np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
  # Every device ends with the global statistics (one leading entry per device).
  for got_stats, want_stats in zip(*map(jax.tree.leaves, (got_updates, want_updates)), strict=True):
    np.testing.assert_allclose(got_stats, np.broadcast_to(want_stats, got_stats.shape), rtol=1e-5, atol=1e-6)
  # Without the axis each shard normalises with its own statistics, which this batch can tell apart.
  local = module.clone(batch_norm_axis=None)
  got_local, _ = jax.vmap(lambda s: local.apply(variables, s, train=True, mutable=["batch_stats"]))(shards)
  assert not np.allclose(got_local.reshape(want.shape), want, atol=1e-3)


# --- Dropout --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("module", "inputs"),
  [
    (ImageCNN(widths=(4,), dense=16, dropout=0.5), (np.ones((2, 8, 8, 3), np.float32),)),
    (LeNet(channels=8, num_layers=1, dropout=0.5, batch_norm=False), (np.ones((2, 8, 8, 1), np.float32),)),
    (TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=16, dropout=0.5), (mmshapes_batch(2)["text"],)),
    (SpectrogramLSTM(hidden=16, dropout=0.5), (np.ones((2, 6, 5, 1), np.float32),)),
  ],
  ids=lambda m: type(m).__name__ if hasattr(m, "dropout") else "",
)
def test_encoder_dropout_is_random_in_training_only(module, inputs):
  variables = module.init(jax.random.key(0), *inputs)
  train = lambda key: module.apply(variables, *inputs, train=True, rngs={"dropout": jax.random.key(key)})  # noqa: E731
  assert not np.array_equal(train(1), train(2))
  np.testing.assert_array_equal(train(1), train(1))
  evaluated = module.apply(variables, *inputs)
  np.testing.assert_array_equal(evaluated, module.apply(variables, *inputs, train=False))
  np.testing.assert_array_equal(evaluated, module.clone(dropout=0.0).apply(variables, *inputs, train=True))
  with pytest.raises(ConfigError, match="'dropout' RNG"):
    module.apply(variables, *inputs, train=True)


def test_classifier_head_dropout_from_the_config():
  config = default_classifier()
  config.modalities.image.update(widths=(4,), dense=8)  # Small, to compile fast; the head is the default's.
  config.modalities.text.update(embed_dim=4, hidden=8)
  config.head_dropout = 0.5
  model = build_classifier(config, num_classes=CLASSES, vocab_size=VOCAB)
  assert model.head_dropout == 0.5
  batch = mmshapes_batch(4)
  batch = {
    **batch,
    "image": batch["image"][:, :8, :8],
    "text": batch["text"][:, :4],
    "text_mask": batch["text_mask"][:, :4],
  }
  variables = model.init(jax.random.key(0), batch)
  train = lambda key: model.apply(variables, batch, train=True, rngs={"dropout": jax.random.key(key)})  # noqa: E731
  assert not np.array_equal(train(1), train(2))
  np.testing.assert_array_equal(model.apply(variables, batch), model.apply(variables, batch))
  # A rate with no hidden layer to act on is a config mistake, not a silent no-op.
  config.head_hidden = ()
  with pytest.raises(ConfigError, match="head_dropout"):
    build_classifier(config, num_classes=CLASSES, vocab_size=VOCAB)


def default_classifier() -> ml_collections.ConfigDict:
  """The default config's classifier description, as the classification task builds it."""
  config = schema.get_config("classification")
  return ml_collections.ConfigDict(
    {"modalities": config.model.modalities, **{key: config.classification[key] for key in MODEL_KEYS}}
  )


def test_encoder_kwargs_pass_the_config_checks():
  config = default_classifier()
  config.modalities.image.update(batch_norm=True, batch_norm_axis=None, dropout=0.1)
  config.modalities.text.dropout = 0.2

  def init_shapes():  # Traces (and so checks) everything, compiles nothing; a new function per call.
    model = build_classifier(config, num_classes=CLASSES, vocab_size=VOCAB)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), mmshapes_batch()))

  variables = init_shapes()
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["batch_stats"]["image_encoder"]) == {"bn0", "bn1"}
  config.modalities.image.dropout = 1.0
  with pytest.raises(ConfigError, match="dropout must be in"):
    init_shapes()
