"""A deterministic dual encoder for the zero-shot and linear-probe tests: a real `Embedder`, no training.

Its "image" input is a float vector (the one-hot of a class plus noise) and its image embedding is that
vector normalised; its text embedding counts, per class, the prompt's tokens that are the class's word,
normalised. So a prompt naming class k and an image of class k share the direction of one-hot k.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mmlearn import parallel as parallel_lib
from mmlearn.data import mmshapes
from mmlearn.evaluators.registry import EvalContext
from mmlearn.tasks.contract import Batch, Embedder, Variables

# Class names: single words of mmshapes' closed vocabulary, so the real tokenizer encodes the prompts.
CLASSNAMES = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "cross")
VARIABLES = {"params": {"scale": jnp.ones((), jnp.float32)}}


def unit(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OneHotEmbedder:
  modalities = ("image", "text")
  relevance: tuple[str, ...] = ()
  query_chunk = 64
  random_baseline = False

  def __init__(self, classnames: tuple[str, ...] = CLASSNAMES):
    self.class_ids = jnp.asarray([int(mmshapes.TOKENIZER.encode(name)[0]) for name in classnames])

  def embed(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    out = {}
    if "image" in batch:
      out["image"] = unit(jnp.asarray(batch["image"], jnp.float32) * variables["params"]["scale"])
    if "text" in batch:
      hits = (batch["text"][..., None] == self.class_ids) & batch["text_mask"][..., None]
      out["text"] = unit(hits.sum(axis=1).astype(jnp.float32))
    return out


_CLAIMS: type[Embedder] = OneHotEmbedder  # Checked by the type checker, as the tasks' claims are.


def split(labels: np.ndarray, num_classes: int, *, noise: float, seed: int) -> list[dict[str, np.ndarray]]:
  """A source whose example i has image one_hot(labels[i]) + noise and that label."""
  rng = np.random.default_rng(seed)
  images = np.eye(num_classes, dtype=np.float32)[labels] + noise * rng.standard_normal(
    (len(labels), num_classes)
  ).astype(np.float32)
  return [{"image": image, "label": np.int64(label)} for image, label in zip(images, labels, strict=True)]


def context(sources=None, *, label_names=None, batch_size: int = 32) -> EvalContext:
  def tokenize(texts):
    from mmlearn.data import pipeline  # noqa: PLC0415

    return pipeline.tokenize(mmshapes.TOKENIZER, texts, 8)

  return EvalContext(
    par=parallel_lib.DataParallel("shard_map"),
    dataset="stub",
    batch_size=batch_size,
    max_tokens=8,
    load_run=None,  # pyright: ignore[reportArgumentType] (no evaluator here loads a run)
    sources=sources or {},
    tokenize=tokenize,
    label_names=label_names or {},
  )
