"""The `coherence` evaluator: a judge classifier's reading of images the generator draws from each input.

For every condition c the generator draws images from (the MVAE: every other modality, and the image
itself; the flow: its condition), each example of the split gets one image generated from its c alone
(at `temperature`: a fresh draw per example); its coherence is the share the judge labels with the
example's label (mmshapes: shape and colour separately too; `mmlearn.metrics.generation`). For the MVAE,
`image_to_image` is each image's reconstruction from its own posterior, the reference for the others,
and `judge/...` is the judge's accuracy on the real images, which bounds what coherence can show.

With `frechet` (the default) the same images are also compared with the real ones in the judge's
penultimate feature space (`mmlearn.metrics.generation`): `frechet/<c>_to_image` is the Fréchet distance
between the images generated from the even-indexed examples and the real odd-indexed ones,
`frechet/real_floor` the distance between the real even- and odd-indexed images (the same sizes, so the
two compare), and `diversity/...` the mean within-class pairwise feature distance, generated and real.

The judge is a separately trained image-only classification run of the same dataset, loaded once when
the evaluator is built (through the run's `load_run`). `scripts/generate.py --judge` runs the same
evaluator on a finished run.
"""

from collections.abc import Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmlearn.data import pipeline
from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.metrics import generation as generation_metrics
from mmlearn.tasks.contract import Batch, Classifier, Generator, RunLoader, SampleOption, Variables

JudgeFn = Callable[[np.ndarray], tuple[jax.Array, jax.Array]]


def judge_outputs(judge: Classifier, variables: Variables, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(logits, penultimate features): the input of the judge classifier's `logits` layer, captured."""
  captured = {}

  def capture(next_fun, args, kwargs, context):
    if context.module.name == "logits" and context.method_name == "__call__":
      captured["features"] = args[0]
    return next_fun(*args, **kwargs)

  batch: Batch = {"image": images}
  with nn.intercept_methods(capture):
    logits = judge.logits(variables, batch)
  if "features" not in captured:
    raise ConfigError("the judge has no 'logits' layer to read features from (a fusion that outputs logits?)")
  return logits, jnp.asarray(captured["features"], jnp.float32)


def load_judge(load_run: RunLoader, judge_workdir: str, dataset: str) -> JudgeFn:
  """`judge_fn(images) -> (logits, features)` of an image-only classification run of `dataset`."""
  config, task, variables = load_run(judge_workdir)
  if not isinstance(task, Classifier) or set(config.model.modalities) != {"image"}:
    raise ConfigError(f"the judge {judge_workdir} must be an image-only classification run")
  if config.dataset.name != dataset:
    raise ConfigError(f"the judge was trained on {config.dataset.name!r}, the generator on {dataset!r}")
  return jax.jit(lambda images: judge_outputs(task, variables, images))


def judge(images: np.ndarray, judge_fn: JudgeFn, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """(labels [N], features [N, D]) of the judge on `images`, in batches."""
  labels, features = [], []
  for start in range(0, len(images), batch_size):
    logits, feats = judge_fn(images[start : start + batch_size])
    labels.append(np.asarray(logits).argmax(-1))
    features.append(np.asarray(feats, np.float32))
  return np.concatenate(labels), np.concatenate(features)


def sample_options(
  *, guidance_scale: float | None = None, num_steps: int = 0, sampler: str | None = None
) -> dict[str, SampleOption]:
  """The sampling overrides that are set (None / 0: the run's own)."""
  options = {"guidance_scale": guidance_scale, "num_steps": num_steps or None, "sampler": sampler}
  return {k: v for k, v in options.items() if v is not None}


class CoherenceEvaluator:
  def __init__(
    self,
    generator: Generator,
    source: Source,
    *,
    split: str,
    judge_fn: JudgeFn,
    dataset: str,
    temperature: float,
    batch_size: int,
    max_tokens: int,
    seed: int,
    frechet: bool = True,
    sample_options: Mapping[str, SampleOption] | None = None,
  ):
    if "image" not in generator.array_modalities:
      raise ConfigError("coherence judges generated images; the run has no image decoder")
    sample_options = dict(sample_options or {})
    unknown = sorted(set(sample_options) - set(generator.sample_options))
    if unknown:
      raise ConfigError(f"sampling option(s) {unknown} do not apply to this run's generator")
    self.generator, self.source, self.split, self.dataset = generator, source, split, dataset
    self.temperature, self.batch_size, self.max_tokens, self.seed = temperature, batch_size, max_tokens, seed
    self.frechet, self.sample_options, self.judge_fn = frechet, sample_options, judge_fn

  def run(self, variables: Variables) -> Iterator[tuple[str, float]]:
    generator, variables = self.generator, jax.device_get(variables)
    conditions = list(generator.sample_conditions("image"))
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
        images, _ = generator.sample(
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
    for name, value in generation_metrics.agreement(np.concatenate(real), labels, self.dataset).items():
      yield f"{self.split}/judge/{name}", value
    for c in conditions:
      for name, value in generation_metrics.agreement(
        np.concatenate(generated[c]), labels, self.dataset
      ).items():
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


@evaluator("coherence", requires=Generator)
def build(
  task: Generator,
  context: EvalContext,
  source: Source,
  *,
  split: str,
  judge_workdir: str = "",
  temperature: float = 1.0,
  frechet: bool = True,
  guidance_scale: float | None = None,
  num_steps: int = 0,
  sampler: str | None = None,
  seed: int = 0,
) -> CoherenceEvaluator:
  """What a trained judge classifier reads in images generated from each other modality; with `frechet`,
  the Fréchet distance and within-class diversity of those images in the judge's feature space.
  `guidance_scale`, `num_steps` and `sampler` (flow runs) override the run's sampling settings; `seed`
  draws the samples."""
  if not judge_workdir:
    raise ConfigError("the coherence evaluator needs judge_workdir (an image-only classification run)")
  return CoherenceEvaluator(
    task,
    source,
    split=split,
    judge_fn=load_judge(context.load_run, judge_workdir, context.dataset),
    dataset=context.dataset,
    temperature=temperature,
    batch_size=context.batch_size,
    max_tokens=context.max_tokens,
    seed=seed,
    frechet=frechet,
    sample_options=sample_options(guidance_scale=guidance_scale, num_steps=num_steps, sampler=sampler),
  )
