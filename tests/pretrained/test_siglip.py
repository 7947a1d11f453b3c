"""`siglip_vision` and `siglip_text` equal `transformers`' SiglipModel on the recorded fixtures.

Two random SigLIP configurations (tests/fixtures/make_pretrained.py): gelu_pytorch_tanh and gelu, patch 8
and 16, 2 and 3 layers, a text projection equal to or different from the text width, LayerNorm eps 1e-6
and 1e-5. Text is fed as SigLIP is used (ids padded to max_position_embeddings, no mask), as mmlearn's
pipeline pads it (zeros and a mask, read as pad tokens), and with an attention mask (`pad_masked=False`).
"""

import jax
import numpy as np
import pytest
import tower_fixtures
from tower_fixtures import cosine, shapes

from mmlearn.errors import ConfigError

NAMES = ("siglip_a", "siglip_b")
FLOAT32_TOLERANCE = 1e-5
# As test_clip: bfloat16 embeddings differ from float32 by about 1% of their largest entry (observed up
# to 0.027 on entries of ~2.1-2.6); 3% leaves margin and still fails any mapping bug.
BFLOAT16_RELATIVE_TOLERANCE = 3e-2


def towers(name: str, dtype: str = "float32"):
  """(vision module, vision params, text module, text params, reference outputs) of one fixture."""
  return tower_fixtures.towers("siglip", name, dtype)


def embed(name: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  vision, vision_params, text, text_params, ref = towers(name, dtype)
  images = jax.jit(vision.apply)({"params": vision_params}, ref["pixel_values"])
  texts = jax.jit(text.apply)({"params": text_params}, ref["input_ids"])
  attention_masked = text.clone(pad_masked=False)
  masked = jax.jit(attention_masked.apply)({"params": text_params}, ref["token_ids"], ref["token_mask"])
  return np.asarray(images), np.asarray(texts), np.asarray(masked), ref


@pytest.mark.parametrize("name", NAMES)
def test_zero_padded_batches_score_as_the_released_model(name):
  """mmlearn's pipeline pads with 0 and a mask; the tower reads the mask's padding as SigLIP's pad token
  (`pad_masked`), so a pipeline batch gives the reference's unmasked, pad-token embeddings."""
  _, _, text, text_params, ref = towers(name)
  mask = ref["token_mask"].astype(bool)
  zero_padded = np.where(mask, ref["token_ids"], 0)
  texts = np.asarray(jax.jit(text.apply)({"params": text_params}, zero_padded, mask))
  np.testing.assert_allclose(texts, ref["text_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_float32_equals_reference(name):
  images, texts, masked, ref = embed(name)
  assert images.dtype == texts.dtype == np.float32
  np.testing.assert_allclose(images, ref["image_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)
  np.testing.assert_allclose(texts, ref["text_embeds"], rtol=0, atol=FLOAT32_TOLERANCE)
  np.testing.assert_allclose(masked, ref["text_embeds_masked"], rtol=0, atol=FLOAT32_TOLERANCE)
  logits = np.exp(ref["logit_scale"]) * cosine(images, texts) + ref["logit_bias"]
  np.testing.assert_allclose(logits, ref["logits_per_image"], rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_computation_is_close(name):
  images, texts, masked, ref = embed(name, "bfloat16")
  assert images.dtype == texts.dtype == np.float32
  pairs = ((images, "image_embeds"), (texts, "text_embeds"), (masked, "text_embeds_masked"))
  for got, key in pairs:
    assert np.abs(got - ref[key]).max() <= BFLOAT16_RELATIVE_TOLERANCE * np.abs(ref[key]).max(), key


@pytest.mark.parametrize("name", NAMES)
def test_params_fit_the_module(name):
  vision, vision_params, text, text_params, ref = towers(name)
  assert shapes(jax.eval_shape(vision.init, jax.random.key(0), ref["pixel_values"][:1])["params"]) == shapes(
    vision_params
  )
  assert shapes(jax.eval_shape(text.init, jax.random.key(0), ref["input_ids"][:1])["params"]) == shapes(
    text_params
  )


def test_wrong_image_size_is_a_config_error():
  vision, vision_params, _, _, _ = towers("siglip_b")
  with pytest.raises(ConfigError, match=r"expected \[B, 32, 32, C\]"):
    vision.apply({"params": vision_params}, np.zeros((1, 16, 16, 3), np.float32))


def test_text_longer_than_the_position_table_is_a_config_error():
  _, _, text, text_params, ref = towers("siglip_a")
  too_long = np.ones((1, ref["token_ids"].shape[1] + 1), np.int32)
  with pytest.raises(ConfigError, match="max_position_embeddings = 16"):
    text.apply({"params": text_params}, too_long)
