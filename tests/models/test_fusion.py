"""Every fusion against a direct numpy formula, its output widths, its use inside the Classifier, and its
behaviour under a presence mask (missing modalities)."""

import string

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmlearn.errors import ConfigError
from mmlearn.models.classifier import Classifier, build_classifier
from mmlearn.models.encoders import ImageCNN, TextLSTM
from mmlearn.models.fusion import FUSIONS, outputs_logits

VOCAB = 20
NUM_CLASSES = 4
BATCH = 3
TWO_MODALITIES = {
  "image": {"encoder": "cnn", "widths": (4,), "dense": 6},
  "text": {"encoder": "lstm", "vocab_size": VOCAB, "embed_dim": 4, "hidden": 5},
}
# Small arguments for every registered fusion; a fusion missing here fails `test_every_fusion_is_covered`.
FUSION_KWARGS = {
  "concat": {},
  "sum": {"dim": 5},
  "late": {"num_classes": NUM_CLASSES, "head_hidden": (3,)},
  "gated": {"dim": 5},
  "attention": {"dim": 6, "num_heads": 2},
  "tensor": {},
  "low_rank_tensor": {"dim": 5, "rank": 3},
  "multiplicative": {"dim": 5},
}
WIDTHS = [(3,), (2, 3), (2, 3, 4)]


def output_width(fusion, widths):
  """The documented output width of each fusion."""
  kwargs = FUSION_KWARGS[fusion]
  if fusion == "concat":
    return sum(widths)
  if fusion == "tensor":
    return int(np.prod([width + 1 for width in widths]))
  if fusion == "late":
    return kwargs["num_classes"]
  return kwargs["dim"]


def features(widths, batch_size=BATCH):
  rng = np.random.default_rng(len(widths) * 10 + sum(widths))
  return [rng.normal(size=(batch_size, width)).astype(np.float32) for width in widths]


def random_params(module, *inputs):
  """The module's own param tree, every leaf drawn at random, so that biases and embeddings that
  initialise to zero (and would hide a missing term) are checked too. Returns (float32, float64) trees.

  Only the tree's shapes come from `module.init`, traced abstractly: running it would cost more
  (op-by-op compilation) than the whole check it feeds."""
  params = jax.eval_shape(module.init, jax.random.key(0), *inputs).get("params", {})
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: rng.normal(scale=0.5, size=p.shape).astype(np.float32), params)
  return params, jax.tree.map(lambda p: np.asarray(p, np.float64), params)


def dense(x, params):
  return x @ params["kernel"] + params["bias"]


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def softmax(x, axis):
  x = np.exp(x - x.max(axis=axis, keepdims=True))
  return x / x.sum(axis=axis, keepdims=True)


def with_one(x):
  return np.concatenate([x, np.ones((x.shape[0], 1))], axis=-1)


def mlp(x, params):
  """A per-modality head of the late fusion: relu hidden layers, then linear logits."""
  for i in range(len(params) - 1):
    x = np.maximum(dense(x, params[f"hidden{i}"]), 0)
  return dense(x, params["logits"])


# --- The math of each fusion, written directly (float64) ------------------------------------------------


def concat_formula(xs, params):
  return np.concatenate(xs, axis=-1)


def sum_formula(xs, params):
  return sum(dense(x, params[f"project{i}"]) for i, x in enumerate(xs))


def late_formula(xs, params):
  return np.mean([mlp(x, params[f"head{i}"]) for i, x in enumerate(xs)], axis=0)


def gated_formula(xs, params):
  everything = np.concatenate(xs, axis=-1)
  return sum(
    sigmoid(dense(everything, params[f"gate{i}"])) * np.tanh(dense(x, params[f"project{i}"]))
    for i, x in enumerate(xs)
  )


def attention_formula(xs, params):
  attention = params["attention"]
  tokens = np.stack([dense(x, params[f"project{i}"]) for i, x in enumerate(xs)], axis=1)
  tokens = tokens + params["modality_embedding"]  # [B, M, dim]
  q, k, v = (
    np.einsum("bmd,dhc->bmhc", tokens, attention[name]["kernel"]) + attention[name]["bias"]
    for name in ("query", "key", "value")
  )
  weights = softmax(np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(q.shape[-1]), axis=-1)
  context = np.einsum("bhqk,bkhc->bqhc", weights, v)
  attended = np.einsum("bqhc,hcd->bqd", context, attention["out"]["kernel"]) + attention["out"]["bias"]
  return np.mean(tokens + attended, axis=1)


def tensor_formula(xs, params):
  letters = string.ascii_lowercase[1 : len(xs) + 1]
  outer = np.einsum(",".join(f"a{letter}" for letter in letters) + "->a" + letters, *map(with_one, xs))
  return outer.reshape(len(xs[0]), -1)


def low_rank_tensor_formula(xs, params):
  rank = params["fusion_weights"].shape[1]
  per_rank = [
    np.prod([with_one(x) @ params[f"factor{i}"][k] for i, x in enumerate(xs)], axis=0) for k in range(rank)
  ]
  return sum(params["fusion_weights"][0, k] * per_rank[k] for k in range(rank)) + params["fusion_bias"]


def multiplicative_formula(xs, params):
  x = xs[0]
  out = x @ params["first_kernel"] + params["bias"]
  if len(xs) == 1:
    return out
  z = np.concatenate(xs[1:], axis=-1)
  # Per example, z picks the matrix sum_j z_j W_j applied to x: x^T (z . W) + z^T U.
  gated = np.stack([x[b] @ np.tensordot(z[b], params["interaction"], axes=1) for b in range(len(x))])
  return out + gated + z @ params["others_kernel"]


FORMULAS = {
  "concat": concat_formula,
  "sum": sum_formula,
  "late": late_formula,
  "gated": gated_formula,
  "attention": attention_formula,
  "tensor": tensor_formula,
  "low_rank_tensor": low_rank_tensor_formula,
  "multiplicative": multiplicative_formula,
}


def test_every_fusion_is_covered():
  assert sorted(FUSION_KWARGS) == sorted(FORMULAS) == FUSIONS.names()


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda widths: f"{len(widths)}modalities")
@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_fusion_equals_its_numpy_formula(fusion, widths):
  inputs = features(widths)
  module = FUSIONS.get(fusion)(**FUSION_KWARGS[fusion])
  params, params64 = random_params(module, inputs)
  out = np.asarray(module.apply({"params": params}, inputs))
  expected = FORMULAS[fusion]([np.asarray(x, np.float64) for x in inputs], params64)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda widths: f"{len(widths)}modalities")
@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_fusion_output_shape(fusion, widths):
  module = FUSIONS.get(fusion)(**FUSION_KWARGS[fusion])
  inputs = features(widths, batch_size=2)
  out = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), inputs, train=True)[0])
  assert out.shape == (2, output_width(fusion, widths))


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_fusion_default_init_gives_finite_varied_output(fusion):
  """The other tests draw their own parameters; this one runs the fusions' own initialisers."""
  module = FUSIONS.get(fusion)(**FUSION_KWARGS[fusion])
  inputs = features((2, 3))
  variables = module.init(jax.random.key(0), inputs)
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(variables))
  out = np.asarray(module.apply(variables, inputs))
  assert np.isfinite(out).all() and out.std() > 1e-3


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_fusion_rejects_no_modalities(fusion):
  with pytest.raises(ValueError, match="at least one"):
    FUSIONS.get(fusion)(**FUSION_KWARGS[fusion]).init(jax.random.key(0), [])


def test_multiplicative_fusion_with_one_modality_is_a_dense_layer():
  module = FUSIONS.get("multiplicative")(dim=5)
  params = module.init(jax.random.key(0), features((3,)))["params"]
  assert sorted(params) == ["bias", "first_kernel"]


def test_attention_fusion_rejects_indivisible_heads():
  with pytest.raises(ConfigError, match="dim=5 is not divisible by num_heads=2"):
    FUSIONS.get("attention")(dim=5, num_heads=2).init(jax.random.key(0), features((2, 3)))


# --- Inside the Classifier ------------------------------------------------------------------------------


def image_text_batch():
  rng = np.random.default_rng(0)
  return {
    "image": rng.uniform(-1, 1, (BATCH, 8, 8, 3)).astype(np.float32),
    "text": rng.integers(1, VOCAB, (BATCH, 5)).astype(np.int32),
    "text_mask": np.arange(5)[None, :] < np.array([[5], [2], [3]]),
    "label": np.array([0, 3, 1], np.int32),
  }


def classifier(fusion, **kwargs):
  fusion_kwargs = {key: value for key, value in FUSION_KWARGS[fusion].items() if key != "num_classes"}
  if outputs_logits(FUSIONS.get(fusion)):
    kwargs.setdefault("head_hidden", fusion_kwargs.pop("head_hidden"))
  return Classifier(
    modalities=TWO_MODALITIES, fusion=fusion, fusion_kwargs=fusion_kwargs, num_classes=NUM_CLASSES, **kwargs
  )


def test_late_fusion_is_the_classifier_head():
  model = classifier("late", head_hidden=(7,))
  batch = image_text_batch()
  variables = model.init(jax.random.key(0), batch)
  params = variables["params"]
  hash(model)
  # No head after the fusion: the per-modality heads, with the classifier's widths, are the only ones.
  assert sorted(params) == ["fusion", "image_encoder", "text_encoder"]
  assert sorted(params["fusion"]) == ["head0", "head1"]
  for head in params["fusion"].values():
    assert head["hidden0"]["kernel"].shape[1] == 7 and head["logits"]["kernel"].shape[1] == NUM_CLASSES

  logits = np.asarray(model.apply(variables, batch))
  image = ImageCNN(**{k: v for k, v in TWO_MODALITIES["image"].items() if k != "encoder"})
  text = TextLSTM(**{k: v for k, v in TWO_MODALITIES["text"].items() if k != "encoder"})
  image_features = image.apply({"params": params["image_encoder"]}, batch["image"])
  text_features = text.apply({"params": params["text_encoder"]}, batch["text"], batch["text_mask"])
  fusion64 = jax.tree.map(lambda p: np.asarray(p, np.float64), params["fusion"])
  per_modality = [
    mlp(np.asarray(image_features, np.float64), fusion64["head0"]),
    mlp(np.asarray(text_features, np.float64), fusion64["head1"]),
  ]
  assert logits.shape == (BATCH, NUM_CLASSES)
  np.testing.assert_allclose(logits, np.mean(per_modality, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_every_fusion_trains_inside_the_classifier(fusion):
  model = classifier(fusion, head_hidden=(6,))
  batch = image_text_batch()
  params, _ = random_params(model, batch)
  assert ("logits" in params) != outputs_logits(FUSIONS.get(fusion))

  def loss(params):
    logits = model.apply({"params": params}, batch, train=True)
    assert logits.shape == (BATCH, NUM_CLASSES)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  grads = jax.grad(loss)(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # Every part of the model (each encoder, the fusion if it has parameters, the head) gets a gradient.
  for name, subtree in grads.items():
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(subtree)) > 0, name


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_unknown_fusion_argument_names_the_fusion(fusion):
  model = Classifier(
    modalities=TWO_MODALITIES, fusion=fusion, fusion_kwargs={"bogus": 1}, num_classes=NUM_CLASSES
  )
  with pytest.raises(ConfigError, match=rf"fusion '{fusion}' got unknown argument\(s\) 'bogus'"):
    jax.eval_shape(model.init, jax.random.key(0), image_text_batch())


def test_late_fusion_takes_num_classes_and_head_hidden_from_the_classifier_only():
  model = Classifier(
    modalities=TWO_MODALITIES, fusion="late", fusion_kwargs={"num_classes": 3}, num_classes=NUM_CLASSES
  )
  with pytest.raises(ConfigError, match="fusion 'late' takes 'num_classes' from the classifier"):
    jax.eval_shape(model.init, jax.random.key(0), image_text_batch())


def test_build_classifier_with_late_fusion():
  config = ml_collections.ConfigDict(
    {
      "modalities": {
        "image": {"encoder": "cnn", "widths": [4], "dense": 6},
        "text": {"encoder": "lstm", "embed_dim": 4, "hidden": 5},
      },
      "fusion": "late",
      "fusion_kwargs": {},
      "head_hidden": [9],
    }
  )
  model = build_classifier(config, num_classes=NUM_CLASSES, vocab_size=VOCAB)
  params = jax.eval_shape(model.init, jax.random.key(0), image_text_batch())["params"]
  assert params["fusion"]["head1"]["hidden0"]["kernel"].shape == (5, 9)
  config.fusion_kwargs.head_hidden = [2]
  with pytest.raises(ConfigError, match="fusion 'late' takes 'head_hidden' from the classifier"):
    build_classifier(config, num_classes=NUM_CLASSES, vocab_size=VOCAB)


# ---- Under a presence mask (missing modalities, mmlearn/data/missing.py) ----

POOLING = ("sum", "late", "gated", "attention")
SLOTS = ("concat", "tensor", "low_rank_tensor", "multiplicative")


def test_every_fusion_is_pooling_or_slots():
  assert sorted(POOLING + SLOTS) == FUSIONS.names()


def apply_fusion(fusion, inputs, present):
  module = FUSIONS.get(fusion)(**FUSION_KWARGS[fusion])
  params, _ = random_params(module, inputs)
  return np.asarray(module.apply({"params": params}, inputs, present=present))


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_all_present_mask_changes_nothing(fusion):
  inputs = features((2, 3, 4))
  all_present = np.ones((len(inputs[0]), 3), bool)
  np.testing.assert_allclose(
    apply_fusion(fusion, inputs, all_present), apply_fusion(fusion, inputs, None), rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize("fusion", sorted(FUSION_KWARGS))
def test_pooling_fusions_ignore_absent_features_and_slot_fusions_use_them(fusion):
  inputs = features((2, 3, 4))
  present = np.array([[True, False, True], [True, True, True], [False, True, True]])
  changed = [x.copy() for x in inputs]
  changed[1][0] += 5.0  # Example 0's second modality is absent.
  changed[0][2] -= 3.0  # Example 2's first modality is absent.
  before, after = apply_fusion(fusion, inputs, present), apply_fusion(fusion, changed, present)
  np.testing.assert_allclose(before[1], after[1], rtol=1e-6)  # Example 1 is untouched either way.
  if fusion in POOLING:
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)
  else:
    assert np.abs(before[[0, 2]] - after[[0, 2]]).max() > 1e-3


def test_late_fusion_averages_the_present_heads_only():
  inputs = features((2, 3))
  module = FUSIONS.get("late")(**FUSION_KWARGS["late"])
  params, _ = random_params(module, inputs)
  present = np.array([[True, False], [False, True], [True, True]])
  out = np.asarray(module.apply({"params": params}, inputs, present=present))
  only = [np.eye(2, dtype=bool)[[i] * 3] for i in (0, 1)]  # Modality i alone, every example.
  full = [np.asarray(module.apply({"params": params}, inputs, present=p)) for p in only]
  np.testing.assert_allclose(out[0], full[0][0], rtol=1e-6)
  np.testing.assert_allclose(out[1], full[1][1], rtol=1e-6)
  np.testing.assert_allclose(out[2], (full[0][2] + full[1][2]) / 2, rtol=1e-5)


def test_presence_mask_of_the_wrong_shape_is_an_error():
  inputs = features((2, 3))
  with pytest.raises(ValueError, match="presence mask of shape"):
    apply_fusion("sum", inputs, np.ones((3, 3), bool))


def test_learned_missing_embedding_replaces_an_absent_encoder_output():
  model = classifier("concat", learned_missing=True)
  batch = image_text_batch()
  params = model.init(jax.random.key(0), batch)["params"]
  assert params["image_missing"].shape == (6,) and params["text_missing"].shape == (5,)
  batch["image_present"] = np.array([False, True, True])
  other = dict(batch, image=batch["image"] + 0.7)
  out, out_other = (np.asarray(model.apply({"params": params}, b)) for b in (batch, other))
  np.testing.assert_allclose(out[0], out_other[0], rtol=1e-6)  # Absent: the input cannot matter.
  assert np.abs(out[1:] - out_other[1:]).max() > 1e-4  # Present: it does.
  params = dict(params, image_missing=params["image_missing"] + 1.0)
  assert np.abs(np.asarray(model.apply({"params": params}, batch))[0] - out[0]).max() > 1e-4


def test_classifier_without_learned_missing_has_no_missing_parameters():
  params = classifier("concat").init(jax.random.key(0), image_text_batch())["params"]
  assert not [name for name in params if name.endswith("_missing")]
