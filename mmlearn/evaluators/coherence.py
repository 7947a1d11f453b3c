"""The `coherence` evaluator: a judge classifier's reading of images the generator draws from each input.

For every condition c the generator draws images from (the MVAE: every other modality, and the image
itself; the flow: its condition), each example of the split gets one image generated from its c alone
(at `temperature`: a fresh draw per example); its coherence is the share the judge labels with the
example's label (mmshapes: shape and colour separately too; `mmlearn.metrics.coherence`). For the MVAE,
`image_to_image` is each image's reconstruction from its own posterior, the reference for the others,
and `judge/...` is the judge's accuracy on the real images, which bounds what coherence can show.

With `frechet` (the default) the same images are also compared with the real ones in the judge's
penultimate feature space (`mmlearn.metrics.generation`): `frechet/<c>_to_image` is the Fréchet distance
between the images generated from the even-indexed examples and the real odd-indexed ones,
`frechet/real_floor` the distance between the real even- and odd-indexed images (the same sizes, so the
two compare), and `diversity/...` the mean within-class pairwise feature distance, generated and real.

The judge is a separately trained image-only classification run of the same dataset, loaded once when
the evaluator is built. `scripts/generate.py --judge` runs the same evaluator on a finished run.
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmlearn.data import pipeline
from mmlearn.errors import ConfigError
from mmlearn.metrics import coherence
from mmlearn.metrics import generation as generation_metrics
from mmlearn.runs import restore


def judge_outputs(task: Any, variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(logits, penultimate features): the input of the judge classifier's `logits` layer, captured."""
  captured = {}

  def capture(next_fun, args, kwargs, context):
    if context.module.name == "logits" and context.method_name == "__call__":
      captured["features"] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    logits = task.logits(variables, {"image": images})
  if "features" not in captured:
    raise ConfigError("the judge has no 'logits' layer to read features from (a fusion that outputs logits?)")
  return logits, jnp.asarray(captured["features"], jnp.float32)


def load_judge(judge_workdir: str, dataset: str) -> tuple[Callable, Any]:
  """(judge_fn(images) -> (logits, features), the judge's config): an image-only classification run."""
  config = restore.read_config(judge_workdir)
  if config.task != "classification" or set(config.model.modalities) != {"image"}:
    raise ConfigError(f"the judge {judge_workdir} must be an image-only classification run")
  if config.dataset.name != dataset:
    raise ConfigError(f"the judge was trained on {config.dataset.name!r}, the generator on {dataset!r}")
  _, _, task, variables = restore.load_run(config, judge_workdir, ())
  return jax.jit(lambda images: judge_outputs(task, variables, images)), config


def image_conditions(task: Any) -> list[str]:
  """What the task generates images from: its `sample_conditions`, else every modality (the MVAE's)."""
  if hasattr(task, "sample_conditions"):
    return list(task.sample_conditions("image"))
  return [m for m in task.modalities if m != "image"] + ["image"]


def judge(images: np.ndarray, judge_fn: Callable, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """(labels [N], features [N, D]) of the judge on `images`, in batches."""
  labels, features = [], []
  for start in range(0, len(images), batch_size):
    logits, feats = judge_fn(images[start : start + batch_size])
    labels.append(np.asarray(logits).argmax(-1))
    features.append(np.asarray(feats, np.float32))
  return np.concatenate(labels), np.concatenate(features)


class CoherenceEvaluator:
  def __init__(
    self,
    task: Any,
    source: Any,
    *,
    split: str,
    judge_workdir: str,
    dataset: str,
    temperature: float,
    batch_size: int,
    max_tokens: int,
    seed: int,
    frechet: bool = True,
    sample_options: Mapping[str, Any] | None = None,
  ):
    if "image" not in task.array_modalities:
      raise ConfigError("coherence judges generated images; the run has no image decoder")
    sample_options = dict(sample_options or {})
    unknown = sorted(set(sample_options) - set(getattr(task, "sample_options", ())))
    if unknown:
      raise ConfigError(f"sampling option(s) {unknown} do not apply to this run's generator")
    self.task, self.source, self.split, self.dataset = task, source, split, dataset
    self.temperature, self.batch_size, self.max_tokens, self.seed = temperature, batch_size, max_tokens, seed
    self.frechet, self.sample_options = frechet, sample_options
    self.judge_fn, self.judge_config = load_judge(judge_workdir, dataset)

  def run(self, variables: dict[str, Any]) -> Iterator[tuple[str, float]]:
    task, variables = self.task, jax.device_get(variables)
    conditions = image_conditions(task)
    labels, real, real_features = [], [], []
    generated = {c: [] for c in conditions}
    features = {c: [] for c in conditions}
    batches = pipeline.eval_batches(
      self.source, batch_size=self.batch_size, max_tokens=self.max_tokens, process_index=0, process_count=1
    )
    for b, batch in enumerate(batches):
      keep = batch.pop("weight") > 0
      labels.append(batch["label"][keep])
      judged, feats = judge(batch["image"], self.judge_fn)
      real.append(judged[keep])
      real_features.append(feats[keep])
      for c in conditions:
        rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), b)
        images, _ = task.sample(
          variables,
          batch,
          rng,
          self.temperature,
          condition=(c,),
          target="image",
          num_samples=1,
          **self.sample_options,
        )
        judged, feats = judge(np.asarray(images)[:, 0], self.judge_fn)
        generated[c].append(judged[keep])
        features[c].append(feats[keep])
    labels = np.concatenate(labels)
    for name, value in coherence.agreement(np.concatenate(real), labels, self.dataset).items():
      yield f"{self.split}/judge/{name}", value
    for c in conditions:
      for name, value in coherence.agreement(np.concatenate(generated[c]), labels, self.dataset).items():
        yield f"{self.split}/coherence/{c}_to_image/{name}", value
    if self.frechet:
      yield from self.distribution_metrics(
        labels, np.concatenate(real_features), {c: np.concatenate(f) for c, f in features.items()}
      )

  def distribution_metrics(
    self, labels: np.ndarray, real: np.ndarray, generated: dict[str, np.ndarray]
  ) -> Iterator[tuple[str, float]]:
    even, odd = generation_metrics.halves(len(labels))
    floor = generation_metrics.frechet_distance(real[even], real[odd])
    real_diversity = generation_metrics.class_diversity(real, labels)
    yield f"{self.split}/frechet/real_floor", floor
    yield f"{self.split}/diversity/real", real_diversity
    for c, feats in generated.items():
      distance = generation_metrics.frechet_distance(feats[even], real[odd])
      diversity = generation_metrics.class_diversity(feats, labels)
      yield f"{self.split}/frechet/{c}_to_image", distance
      yield f"{self.split}/frechet/{c}_to_image/ratio", distance / max(floor, 1e-12)
      yield f"{self.split}/diversity/{c}_to_image", diversity
      yield f"{self.split}/diversity/{c}_to_image/ratio", diversity / max(real_diversity, 1e-12)
