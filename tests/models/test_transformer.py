"""The `vit` and `transformer` encoders: shapes, padding invariance, bfloat16, config errors, training."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import run_steps
from mmlearn import data, optim
from mmlearn import parallel as parallel_lib
from mmlearn.data import pipeline
from mmlearn.errors import ConfigError
from mmlearn.models.classifier import build_classifier
from mmlearn.models.encoders import ENCODERS
from mmlearn.models.transformer import TextTransformer, VisionTransformer
from mmlearn.tasks import TASKS

VOCAB = 20
SMALL = {"width": 16, "depth": 2, "heads": 4, "mlp_dim": 32}
# Rows of lengths 5, 2, 7 and 0 (an empty caption), padded with id 0 to 7 tokens; row 1's padding is not
# a suffix (the mask need not be a prefix).
TOKENS = np.array(
  [[3, 5, 7, 9, 2, 0, 0], [0, 4, 0, 4, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 0]], np.int32
)
MASK = np.array(
  [[1, 1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], bool
)


def images(batch_size=2, size=16, channels=3):
  return np.random.default_rng(0).uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)


def test_both_encoders_are_registered():
  assert ENCODERS.get("vit") is VisionTransformer
  assert ENCODERS.get("transformer") is TextTransformer


@pytest.mark.parametrize("pool", ["mean", "cls"])
@pytest.mark.parametrize("dense", [None, 8])
def test_output_shapes(pool, dense):
  vit = VisionTransformer(patch=4, pool=pool, dense=dense, **SMALL)
  variables = vit.init(jax.random.key(0), images())
  out = vit.apply(variables, images())
  assert out.shape == (2, dense or 16) and out.dtype == jnp.float32
  # 16x16 / 4x4 patches: 16 position embeddings, and a spectrogram-like 1-channel input works too.
  assert variables["params"]["pos_embed"].shape == (1, 16, 16)
  spectrogram = images(size=8, channels=1)
  assert vit.apply(vit.init(jax.random.key(0), spectrogram), spectrogram).shape == (2, dense or 16)

  text = TextTransformer(vocab_size=VOCAB, pool=pool, dense=dense, **SMALL)
  out = text.apply(text.init(jax.random.key(0), TOKENS, MASK), TOKENS, MASK)
  assert out.shape == (4, dense or 16) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_text_encoder_ignores_padded_tokens(pool):
  text = TextTransformer(vocab_size=VOCAB, pool=pool, **SMALL)
  variables = text.init(jax.random.key(0), TOKENS, MASK)
  out = np.asarray(text.apply(variables, TOKENS, MASK))
  # Any id under the padding, even out of range, gives the same features (to float32 rounding).
  other = np.where(MASK, TOKENS, np.random.default_rng(1).integers(0, VOCAB + 50, TOKENS.shape))
  assert (other != TOKENS).any()
  np.testing.assert_allclose(np.asarray(text.apply(variables, other, MASK)), out, rtol=0, atol=1e-6)
  # A real token does change them (the test above could pass for an encoder that ignores its input).
  changed = TOKENS.copy()
  changed[0, 0] = 11
  assert np.abs(np.asarray(text.apply(variables, changed, MASK))[0] - out[0]).max() > 1e-3
  if pool == "mean":
    np.testing.assert_array_equal(out[3], 0.0)  # An empty caption pools to zeros, as the LSTM's.


def test_no_mask_means_every_token_is_real():
  text = TextTransformer(vocab_size=VOCAB, **SMALL)
  variables = text.init(jax.random.key(0), TOKENS)
  full = np.ones(TOKENS.shape, bool)
  np.testing.assert_array_equal(text.apply(variables, TOKENS), text.apply(variables, TOKENS, full))


def test_bfloat16_matches_float32_with_the_same_params():
  """bfloat16 compute (float32 params, LayerNorm statistics and softmax) stays within 0.1 of float32.

  The features are LayerNorm outputs (unit scale per token); bfloat16 keeps 8 mantissa bits (relative
  error 2^-9 per rounding), and two blocks of rounding put the largest difference near 0.02 here.
  """
  for f32, bf16, args in [
    (VisionTransformer(**SMALL), VisionTransformer(dtype="bfloat16", **SMALL), (images(),)),
    (
      TextTransformer(vocab_size=VOCAB, **SMALL),
      TextTransformer(vocab_size=VOCAB, dtype=jnp.bfloat16, **SMALL),
      (TOKENS, MASK),
    ),
  ]:
    variables = f32.init(jax.random.key(0), *args)
    bf16_variables = bf16.init(jax.random.key(0), *args)
    # Parameters are float32 whatever the compute dtype: one checkpoint serves both.
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_variables)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.structure(bf16_variables) == jax.tree.structure(variables)
    want = np.asarray(f32.apply(variables, *args))
    got = bf16.apply(variables, *args)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=0.1)
    # Not trivially equal: the computation did run in bfloat16.
    assert np.abs(np.asarray(got) - want).max() > 0


@pytest.mark.parametrize(
  ("encoder", "kwargs", "key"),
  [
    ("vit", {"patch": 5}, "patch"),  # 5 does not divide 16.
    ("vit", {"width": 18, "heads": 4}, "heads"),
    ("vit", {"pool": "max"}, "pool"),
    ("vit", {"dtype": "int32"}, "dtype"),
    ("transformer", {"width": 10, "heads": 3}, "heads"),
    ("transformer", {"dropout": 1.5}, "dropout"),
    ("transformer", {"max_len": 4}, "max_len"),  # The captions have 7 tokens.
  ],
)
def test_bad_config_raises_a_config_error_naming_the_key(encoder, kwargs, key):
  modality = "image" if encoder == "vit" else "text"
  config = {"encoder": encoder, **SMALL, **kwargs}
  batch = {"image": images(), "text": TOKENS[:2], "text_mask": MASK[:2], "label": np.zeros(2, np.int32)}
  with pytest.raises(ConfigError, match=key):
    model = build_classifier({"modalities": {modality: config}}, num_classes=3, vocab_size=VOCAB)
    model.init(jax.random.key(0), batch)


def test_dropout_needs_an_rng_only_when_training():
  text = TextTransformer(vocab_size=VOCAB, dropout=0.3, attention_dropout=0.1, **SMALL)
  variables = text.init(jax.random.key(0), TOKENS, MASK)
  # Evaluation is deterministic and needs no RNG.
  np.testing.assert_array_equal(text.apply(variables, TOKENS, MASK), text.apply(variables, TOKENS, MASK))
  with pytest.raises(ConfigError, match="dropout"):
    text.apply(variables, TOKENS, MASK, train=True)
  a, b = (
    text.apply(variables, TOKENS, MASK, train=True, rngs={"dropout": jax.random.key(i)}) for i in (1, 2)
  )
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0
  # Rate 0 (the default) trains without an RNG.
  plain = TextTransformer(vocab_size=VOCAB, **SMALL)
  np.testing.assert_array_equal(
    plain.apply(variables, TOKENS, MASK, train=True), plain.apply(variables, TOKENS, MASK)
  )


@pytest.mark.e2e  # Trains 15-20 steps.
def test_classifier_with_transformer_towers_lowers_the_loss(tiny_config):
  config = tiny_config
  config.model.modalities.image = ml_collections.ConfigDict({"encoder": "vit", "patch": 8, **SMALL})
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "transformer", **SMALL})
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=config.dataset.data_dir)
  task = TASKS.get("classification")(config, num_classes=16, vocab_size=data.vocab_size("mmshapes"))
  batch = next(pipeline.train_iterator(sources["train"], batch_size=32, seed=0, max_tokens=16))
  config.optimizer.update(name="adam", learning_rate=0.01, warmup_steps=0)
  tx = optim.make_optimizer(config.optimizer, 100)
  params = task.init(jax.random.PRNGKey(0), batch)
  assert {"vit", "transformer"} == {m["encoder"] for m in task.model.modalities.values()}
  _, losses = run_steps(parallel_lib.DataParallel("shard_map"), task, tx, params, [batch] * 20)
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
