"""`clip_vision` and `clip_text` equal `transformers`' CLIPModel on the recorded fixtures.

The fixtures (tests/fixtures/make_pretrained.py) hold two random CLIP configurations that between them
take every branch: quick_gelu and gelu, the legacy `eos_token_id == 2` argmax pooling and the first-EOS
pooling, patch 8 and 16, 2 and 3 layers, LayerNorm eps 1e-5 and 1e-6. `reference.npz` holds the reference
library's outputs for the same inputs.
"""

import jax
import numpy as np
import pytest
import tower_fixtures
from tower_fixtures import cosine, shapes

from mmlearn.errors import ConfigError

NAMES = ("clip_a", "clip_b")
FLOAT32_TOLERANCE = 1e-5
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2% per operation); after the embeddings,
# 2-3 blocks and the pooling head the embeddings differ from float32 by about 1% of their largest entry
# (observed up to 0.024 on entries of ~2.4-3.0 here; 0.036 on ~3.2 for a random ViT-B/16, 12 layers).
# 3% leaves room for other XLA versions yet fails any mapping bug, which moves them by their whole size.
BFLOAT16_RELATIVE_TOLERANCE = 3e-2


def towers(name: str, dtype: str = "float32"):
  """(vision module, vision params, text module, text params, reference outputs) of one fixture."""
  return tower_fixtures.towers("clip", name, dtype)


def embed(name: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, dict]:
  vision, vision_params, text, text_params, ref = towers(name, dtype)
  images = jax.jit(vision.apply)({"params": vision_params}, ref["pixel_values"])
  texts = jax.jit(text.apply)({"params": text_params}, ref["input_ids"], ref["attention_mask"])
  return np.asarray(images), np.asarray(texts), ref


@pytest.mark.parametrize("name", NAMES)
def test_float32_equals_reference(name):
  images, texts, ref = embed(name)
  assert images.dtype == texts.dtype == np.float32
  np.testing.assert_allclose(images, ref["image_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)
  np.testing.assert_allclose(texts, ref["text_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)
  logits = np.exp(ref["logit_scale"]) * cosine(images, texts)
  np.testing.assert_allclose(logits, ref["logits_per_image"], rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_computation_is_close(name):
  images, texts, ref = embed(name, "bfloat16")
  assert images.dtype == texts.dtype == np.float32
  for got, want in ((images, ref["image_embeds"]), (texts, ref["text_embeds"])):
    assert np.abs(got - want).max() <= BFLOAT16_RELATIVE_TOLERANCE * np.abs(want).max()


@pytest.mark.parametrize("name", NAMES)
def test_params_fit_the_module(name):
  vision, vision_params, text, text_params, ref = towers(name)
  init = jax.eval_shape(vision.init, jax.random.key(0), ref["pixel_values"][:1])["params"]
  assert shapes(init) == shapes(vision_params)
  init = jax.eval_shape(text.init, jax.random.key(0), ref["input_ids"][:1], ref["attention_mask"][:1])[
    "params"
  ]
  assert shapes(init) == shapes(text_params)


def test_pooling_reads_only_up_to_the_end_of_text():
  """Causal attention: what follows the EOS (padding, or other tokens) never changes the embedding."""
  for name in NAMES:
    _, _, text, text_params, ref = towers(name)
    ids, mask = ref["token_ids"], ref["token_mask"]  # Padded to max_position_embeddings.
    apply = jax.jit(text.apply)
    base = apply({"params": text_params}, ids, mask)
    np.testing.assert_allclose(base, ref["text_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)
    changed = np.where(mask == 1, ids, 5)  # Other ids under the padding.
    np.testing.assert_allclose(apply({"params": text_params}, changed, None), base, atol=FLOAT32_TOLERANCE)


def test_wrong_image_size_is_a_config_error():
  vision, vision_params, _, _, ref = towers("clip_a")
  with pytest.raises(ConfigError, match=r"expected \[B, 32, 32, C\]"):
    vision.apply({"params": vision_params}, np.zeros((1, 48, 48, 3), np.float32))
