"""The `coherence` evaluator: a judge classifier's reading of images the generator draws from each input.

For every modality c other than the image, each example of the split gets one image generated from its
c alone (at `temperature`, a fresh draw per example); its coherence is the share the judge labels with
the example's label (mmshapes: shape and colour separately too; `mmlearn.coherence`). `image_to_image`
is each image's reconstruction from its own posterior, the reference for the others, and `judge/...`
the judge's accuracy on the real images, which bounds what coherence can show.

The judge is a separately trained image-only classification run of the same dataset, loaded once when
the evaluator is built. `scripts/generate.py --judge` runs the same evaluator on a finished run.
"""

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from mmlearn import coherence, restore
from mmlearn.data import pipeline
from mmlearn.errors import ConfigError


def load_judge(judge_workdir: str, dataset: str) -> tuple[Callable, Any]:
  """(judge_fn(images) -> logits, the judge's config): an image-only classification run of `dataset`."""
  config = restore.read_config(judge_workdir)
  if config.task != "classification" or set(config.model.modalities) != {"image"}:
    raise ConfigError(f"the judge {judge_workdir} must be an image-only classification run")
  if config.dataset.name != dataset:
    raise ConfigError(f"the judge was trained on {config.dataset.name!r}, the generator on {dataset!r}")
  _, _, task, variables = restore.load_run(config, judge_workdir, ())
  return jax.jit(lambda images: task.logits(variables, {"image": images})), config


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
  ):
    if "image" not in task.array_modalities:
      raise ConfigError("coherence judges generated images; the run has no image decoder")
    self.task, self.source, self.split, self.dataset = task, source, split, dataset
    self.temperature, self.batch_size, self.max_tokens, self.seed = temperature, batch_size, max_tokens, seed
    self.judge_fn, self.judge_config = load_judge(judge_workdir, dataset)

  def run(self, variables: dict[str, Any]) -> Iterator[tuple[str, float]]:
    task, variables = self.task, jax.device_get(variables)
    conditions = [m for m in task.modalities if m != "image"] + ["image"]
    labels, real, generated = [], [], {c: [] for c in conditions}
    batches = pipeline.eval_batches(
      self.source, batch_size=self.batch_size, max_tokens=self.max_tokens, process_index=0, process_count=1
    )
    for b, batch in enumerate(batches):
      keep = batch.pop("weight") > 0
      labels.append(batch["label"][keep])
      real.append(coherence.judge_labels(batch["image"], self.judge_fn)[keep])
      for c in conditions:
        rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), b)
        images, _ = task.sample(
          variables, batch, rng, self.temperature, condition=(c,), target="image", num_samples=1
        )
        generated[c].append(coherence.judge_labels(np.asarray(images)[:, 0], self.judge_fn)[keep])
    labels = np.concatenate(labels)
    for name, value in coherence.agreement(np.concatenate(real), labels, self.dataset).items():
      yield f"{self.split}/judge/{name}", value
    for c in conditions:
      for name, value in coherence.agreement(np.concatenate(generated[c]), labels, self.dataset).items():
        yield f"{self.split}/coherence/{c}_to_image/{name}", value
