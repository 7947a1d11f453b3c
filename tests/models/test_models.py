"""Encoders, fusions and the classifier: shapes, padding invariance, fusion math and config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmlearn.errors import ConfigError
from mmlearn.models.classifier import Classifier, build_classifier
from mmlearn.models.encoders import ENCODERS, ImageCNN, TextLSTM
from mmlearn.models.fusion import FUSIONS, ConcatFusion, SumFusion

VOCAB = 20
# Rows of lengths 5, 2, 7 and 1, right-padded with id 0 to 7 tokens.
TOKENS = np.array(
  [[3, 5, 7, 9, 2, 0, 0], [4, 4, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7], [8, 0, 0, 0, 0, 0, 0]], np.int32
)
LENGTHS = np.array([5, 2, 7, 1])
MASK = np.arange(TOKENS.shape[1])[None, :] < LENGTHS[:, None]


def init_apply(module, *args, **kwargs):
  variables = module.init(jax.random.key(0), *args, **kwargs)
  return variables.get("params", {}), np.asarray(module.apply(variables, *args, **kwargs))


def image_text_batch(batch_size=3):
  rng = np.random.default_rng(0)
  return {
    "image": rng.uniform(-1, 1, (batch_size, 8, 8, 3)).astype(np.float32),
    "text": TOKENS[:batch_size],
    "text_mask": MASK[:batch_size],
    "label": np.zeros(batch_size, np.int32),
  }


TWO_MODALITIES = {
  "image": {"encoder": "cnn", "widths": (4,), "dense": 6},
  "text": {"encoder": "lstm", "vocab_size": VOCAB, "embed_dim": 4, "hidden": 5},
}


# --- Encoders -------------------------------------------------------------------------------------------


def test_registries_know_the_builtin_names():
  assert ENCODERS.get("cnn") is ImageCNN and ENCODERS.get("lstm") is TextLSTM
  assert FUSIONS.get("concat") is ConcatFusion and FUSIONS.get("sum") is SumFusion


def test_image_cnn_shape_and_one_pool_per_width():
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  params, out = init_apply(ImageCNN(widths=(4, 8), dense=12), images)
  assert out.shape == (2, 12)
  assert (out >= 0).all()  # Ends in relu.
  # Two 2x2 pools: 16x16 -> 4x4, with 8 channels, feed the dense layer.
  assert params["dense"]["kernel"].shape == (4 * 4 * 8, 12)
  assert sorted(params) == ["conv0", "conv1", "dense"]


def test_image_cnn_ignores_mask():
  images = np.ones((2, 8, 8, 3), np.float32)
  module = ImageCNN(widths=(4,), dense=6)
  variables = module.init(jax.random.key(0), images)
  np.testing.assert_array_equal(
    module.apply(variables, images), module.apply(variables, images, np.zeros((2, 3), bool), train=True)
  )


@pytest.mark.parametrize(
  ("kwargs", "width"),
  [({}, 5), ({"bidirectional": True}, 10), ({"dense": 3}, 3)],
)
def test_text_lstm_shapes(kwargs, width):
  _, out = init_apply(TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, **kwargs), TOKENS, MASK)
  assert out.shape == (4, width)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_text_lstm_padding_never_changes_the_output(bidirectional):
  module = TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, bidirectional=bidirectional)
  variables = module.init(jax.random.key(0), TOKENS, MASK)
  out = np.asarray(module.apply(variables, TOKENS, MASK))

  # More padding at the end.
  longer = np.pad(TOKENS, ((0, 0), (0, 4)))
  longer_mask = np.pad(MASK, ((0, 0), (0, 4)))
  np.testing.assert_allclose(module.apply(variables, longer, longer_mask), out, rtol=1e-6, atol=1e-6)

  # Other (valid) ids under the padding.
  garbage = np.where(MASK, TOKENS, np.random.default_rng(1).integers(1, VOCAB, TOKENS.shape))
  assert (garbage != TOKENS).any()
  np.testing.assert_allclose(module.apply(variables, garbage, MASK), out, rtol=1e-6, atol=1e-6)


def test_text_lstm_without_mask_reads_every_token():
  module = TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5)
  variables = module.init(jax.random.key(0), TOKENS)
  np.testing.assert_array_equal(
    module.apply(variables, TOKENS), module.apply(variables, TOKENS, np.ones(TOKENS.shape, bool))
  )
  # ... which differs from masking the padding away, so the mask is really used.
  assert not np.allclose(module.apply(variables, TOKENS), module.apply(variables, TOKENS, MASK))


def test_text_lstm_empty_sequence_encodes_to_zeros():
  module = TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, bidirectional=True)
  tokens = np.array([[3, 4, 0], [0, 0, 0]], np.int32)
  mask = np.array([[True, True, False], [False, False, False]])
  _, out = init_apply(module, tokens, mask)
  assert np.abs(out[0]).sum() > 0
  np.testing.assert_array_equal(out[1], 0.0)


def run_cell(cell_params, embedded_tokens, hidden):
  """The LSTM hidden state after feeding `embedded_tokens` [T, E] one by one to a fresh cell."""
  cell = nn.OptimizedLSTMCell(hidden)
  carry = (jnp.zeros((1, hidden)), jnp.zeros((1, hidden)))
  for step in embedded_tokens:
    carry, _ = cell.apply({"params": cell_params}, carry, step[None])
  return np.asarray(carry[1][0])


def test_text_lstm_equals_manual_cell_over_real_tokens():
  params, out = init_apply(TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5), TOKENS, MASK)
  embedding = params["embed"]["embedding"]
  for row, length in enumerate(LENGTHS):
    expected = run_cell(params["forward_lstm"], embedding[TOKENS[row, :length]], 5)
    np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-6)


def test_bidirectional_lstm_reads_real_tokens_forward_then_reversed():
  params, out = init_apply(
    TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, bidirectional=True), TOKENS, MASK
  )
  embedding = params["embed"]["embedding"]
  for row, length in enumerate(LENGTHS):
    real = embedding[TOKENS[row, :length]]
    np.testing.assert_allclose(out[row, :5], run_cell(params["forward_lstm"], real, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
      out[row, 5:], run_cell(params["backward_lstm"], real[::-1], 5), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("bidirectional", [False, True])
def test_text_lstm_gradient_under_shard_map_with_vma_checks(bidirectional):
  """The trainer differentiates w.r.t. device-varying params inside `shard_map(check_vma=True)`."""
  module = TextLSTM(vocab_size=VOCAB, embed_dim=4, hidden=5, bidirectional=bidirectional)
  params = module.init(jax.random.key(0), TOKENS, MASK)["params"]
  mesh = jax.make_mesh((1,), ("batch",))

  def step(params, tokens, mask):
    params = jax.tree.map(lambda p: jax.lax.pcast(p, "batch", to="varying"), params)
    grads = jax.grad(lambda p: module.apply({"params": p}, tokens, mask).sum())(params)
    return jax.lax.pmean(grads, "batch")

  def put(tree, spec):
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))

  sharded_step = jax.jit(
    jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch"), P("batch")), out_specs=P())
  )
  grads = sharded_step(put(params, P()), put(TOKENS, P("batch")), put(MASK, P("batch")))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads["forward_lstm"]["ii"]["kernel"]).sum() > 0


# --- Fusions --------------------------------------------------------------------------------------------


def features(*widths, batch_size=3):
  rng = np.random.default_rng(sum(widths))
  return [rng.normal(size=(batch_size, width)).astype(np.float32) for width in widths]


@pytest.mark.parametrize("widths", [(4,), (4, 6), (2, 3, 5)])
def test_concat_fusion_equals_numpy_concatenate(widths):
  inputs = features(*widths)
  _, out = init_apply(ConcatFusion(), inputs)
  np.testing.assert_array_equal(out, np.concatenate(inputs, axis=-1))


@pytest.mark.parametrize("widths", [(4,), (4, 6), (2, 3, 5)])
def test_sum_fusion_equals_sum_of_per_modality_projections(widths):
  inputs = features(*widths)
  params, out = init_apply(SumFusion(dim=7), inputs)
  assert out.shape == (3, 7)
  assert len(params) == len(widths)  # One projection per modality.
  expected = sum(
    x @ np.asarray(params[f"project{i}"]["kernel"]) + np.asarray(params[f"project{i}"]["bias"])
    for i, x in enumerate(inputs)
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", [ConcatFusion(), SumFusion(dim=3)])
def test_fusion_rejects_no_modalities(fusion):
  with pytest.raises(ValueError, match="at least one"):
    fusion.init(jax.random.key(0), [])


# --- Classifier -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fusion", "fusion_kwargs"), [("concat", {}), ("sum", {"dim": 8})])
def test_classifier_two_modalities(fusion, fusion_kwargs):
  model = Classifier(
    modalities=TWO_MODALITIES, fusion=fusion, fusion_kwargs=fusion_kwargs, head_hidden=(9,), num_classes=4
  )
  params, logits = init_apply(model, image_text_batch())
  assert logits.shape == (3, 4)
  assert {"image_encoder", "text_encoder", "head0", "logits"} <= set(params)
  assert params["head0"]["kernel"].shape[0] == (11 if fusion == "concat" else 8)
  hash(model)  # jit and Linen need hashable modules, even when built from plain dicts.


@pytest.mark.parametrize("modality", ["image", "text"])
def test_classifier_one_modality_ignores_the_other_input(modality):
  model = Classifier(modalities={modality: TWO_MODALITIES[modality]}, num_classes=4)
  params, logits = init_apply(model, image_text_batch())
  assert logits.shape == (3, 4)
  assert set(params) == {"logits", f"{modality}_encoder"}


def test_classifier_passes_the_text_mask_to_the_encoder():
  model = Classifier(modalities=TWO_MODALITIES, num_classes=4)
  batch = image_text_batch()
  variables = model.init(jax.random.key(0), batch)
  logits = model.apply(variables, batch)
  repadded = {**batch, "text": np.where(batch["text_mask"], batch["text"], 17)}
  np.testing.assert_allclose(model.apply(variables, repadded), logits, rtol=1e-6, atol=1e-6)
  unmasked = {key: value for key, value in repadded.items() if key != "text_mask"}
  assert not np.allclose(model.apply(variables, unmasked), logits)


def test_unknown_fusion_and_encoder_names():
  batch = image_text_batch()
  known = "attention, concat, gated, late, low_rank_tensor, multiplicative, sum, tensor"
  with pytest.raises(ConfigError, match=f"unknown fusion 'nope'; known: {known}"):
    Classifier(modalities=TWO_MODALITIES, fusion="nope", num_classes=4).init(jax.random.key(0), batch)
  with pytest.raises(ConfigError, match="unknown encoder 'vit9'"):
    Classifier(modalities={"image": {"encoder": "vit9"}}, num_classes=4).init(jax.random.key(0), batch)


def test_unknown_encoder_and_fusion_arguments_are_named():
  batch = image_text_batch()
  bad_encoder = {"image": {"encoder": "cnn", "widhts": (4,)}}
  with pytest.raises(
    ConfigError, match=r"encoder 'cnn' of modality 'image' got unknown argument\(s\) 'widhts'"
  ):
    Classifier(modalities=bad_encoder, num_classes=4).init(jax.random.key(0), batch)
  with pytest.raises(ConfigError, match=r"fusion 'sum' got unknown argument\(s\) 'width'"):
    Classifier(modalities=TWO_MODALITIES, fusion="sum", fusion_kwargs={"width": 3}, num_classes=4).init(
      jax.random.key(0), batch
    )
  no_vocab = {"text": {"encoder": "lstm"}}
  with pytest.raises(ConfigError, match="encoder 'lstm' of modality 'text' is missing .*'vocab_size'"):
    Classifier(modalities=no_vocab, num_classes=4).init(jax.random.key(0), batch)


def test_missing_modality_in_batch_is_named():
  batch = image_text_batch()
  del batch["image"]
  with pytest.raises(ConfigError, match="batch has no input for modality 'image'"):
    Classifier(modalities=TWO_MODALITIES, num_classes=4).init(jax.random.key(0), batch)


# --- build_classifier -----------------------------------------------------------------------------------


def model_config():
  config = ml_collections.ConfigDict()
  config.modalities = ml_collections.ConfigDict()
  config.modalities.image = ml_collections.ConfigDict({"encoder": "cnn", "widths": [4], "dense": 6})
  config.modalities.text = ml_collections.ConfigDict({"encoder": "lstm", "embed_dim": 4, "hidden": 5})
  config.fusion = "sum"
  config.fusion_kwargs = ml_collections.ConfigDict({"dim": 8})
  config.head_hidden = [9]
  return config


def test_build_classifier_from_config_dict():
  model = build_classifier(model_config(), num_classes=4, vocab_size=VOCAB)
  assert model.modalities["text"]["vocab_size"] == VOCAB
  assert model.modalities["image"]["widths"] == (4,)
  assert (model.fusion, dict(model.fusion_kwargs), tuple(model.head_hidden)) == ("sum", {"dim": 8}, (9,))
  hash(model)
  params, logits = init_apply(model, image_text_batch())
  assert logits.shape == (3, 4)
  assert params["text_encoder"]["embed"]["embedding"].shape == (VOCAB, 4)
  assert params["head0"]["kernel"].shape == (8, 9)


def test_build_classifier_keeps_a_configured_vocab_size():
  config = model_config()
  config.modalities.text.vocab_size = 33
  assert build_classifier(config, num_classes=4, vocab_size=VOCAB).modalities["text"]["vocab_size"] == 33


def test_build_classifier_errors():
  with pytest.raises(ConfigError, match="modality 'text' needs a vocab_size"):
    build_classifier(model_config(), num_classes=4, vocab_size=None)
  image_only = model_config()
  del image_only.modalities["text"]
  assert "vocab_size" not in build_classifier(image_only, num_classes=4, vocab_size=None).modalities["image"]
  config = model_config()
  config.fusion = "nope"
  with pytest.raises(ConfigError, match="unknown fusion 'nope'"):
    build_classifier(config, num_classes=4, vocab_size=VOCAB)
  config = model_config()
  config.modalities.text.encoder = "transformer9"
  with pytest.raises(ConfigError, match="unknown encoder 'transformer9'"):
    build_classifier(config, num_classes=4, vocab_size=VOCAB)
  config = model_config()
  config.modalities.image.depth = 3
  with pytest.raises(
    ConfigError, match=r"encoder 'cnn' of modality 'image' got unknown argument\(s\) 'depth'"
  ):
    build_classifier(config, num_classes=4, vocab_size=VOCAB)
