"""The `zero_shot` evaluator: classifies a split's images by their similarity to prompts naming each class.

CLIP's protocol (Radford et al., 2021, section 3.1.4): each class name is put into every template ("a
photo of a {}."), the prompts are tokenized as the pipeline tokenizes captions (`EvalContext.tokenize`:
the run's `dataset.tokenizer` and `dataset.max_tokens`) and embedded by the task's text tower; each
class's prompt embeddings are L2-normalised, averaged over the templates and normalised again. Every
image of the split is embedded by the image tower (one ordered pass, `ExampleOutputs`, on every device)
and its class is the one of highest cosine similarity.

It reports `<split>/zero_shot/top1`, and `<split>/zero_shot/top5` with 5 classes or more. A tie in
similarity counts against the true class (as the retrieval metrics' rule), so a model that embeds every
prompt alike scores 0, not 1. Class names default to the dataset's names of the `label` feature, with
underscores read as spaces (mmshapes' "red_circle" is prompted as "red circle"). The prompts are
tokenized when the evaluator is built, so a word the tokenizer cannot encode (a closed vocabulary's) is
an error before anything trains. Labels are read from the split's stored records once.
"""

from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from mmlearn.data.pipeline import Source
from mmlearn.errors import ConfigError
from mmlearn.evaluators.registry import EvalContext, evaluator
from mmlearn.evaluators.split_pass import ExampleOutputs, check_modality, feature_values
from mmlearn.metrics.classification import top_k_accuracy
from mmlearn.tasks.contract import Batch, Embedder, Metric, Variables

TOP_K = (1, 5)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
  if isinstance(templates, str) or not templates:
    raise ConfigError(f"zero_shot: templates must be a non-empty tuple of strings, got {templates!r}")
  for template in templates:
    try:
      ok = "{}" in template and template.format("x") is not None
    except (IndexError, KeyError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"zero_shot: template {template!r} must hold the class name's place as '{{}}' (once)")
  return tuple(templates)


def class_names(classnames: Sequence[str], context: EvalContext, label: str) -> tuple[str, ...]:
  """`classnames`, else the dataset's names of the `label` feature (underscores read as spaces)."""
  if isinstance(classnames, str):
    raise ConfigError(f"zero_shot: classnames must be a tuple of strings, got {classnames!r}")
  if classnames:
    return tuple(classnames)
  if label not in context.label_names:
    raise ConfigError(
      f"zero_shot: dataset {context.dataset!r} has no class names for feature {label!r}; give classnames"
    )
  return tuple(name.replace("_", " ") for name in context.label_names[label])


def normalise(x: np.ndarray) -> np.ndarray:
  """`x` / its L2 norm along the last axis (a zero vector stays zero)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, D] from [C * T, D] prompt embeddings (class-major): normalised, averaged over T, normalised."""
  x = np.asarray(prompt_embeddings, np.float32).reshape(num_classes, -1, prompt_embeddings.shape[-1])
  return normalise(normalise(x).mean(axis=1))


class ZeroShotEvaluator:
  """Top-1 (and top-5) accuracy of a split's images against class prompts embedded by the text tower."""

  def __init__(
    self,
    task: Embedder,
    context: EvalContext,
    source: Source,
    *,
    split: str,
    image: str,
    text: str,
    label: str,
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
  ):
    self.split, self.source, self.label, self.classnames = split, source, label, classnames
    if context.tokenize is None:
      raise ConfigError(f"zero_shot: dataset {context.dataset!r} has no tokenizer to encode prompts with")
    prompts = [template.format(name) for name in classnames for template in templates]
    ids, mask = context.tokenize(prompts)
    if not mask.any(axis=1).all():
      empty = prompts[int(np.argmin(mask.any(axis=1)))]
      raise ConfigError(f"zero_shot: prompt {empty!r} has no tokens")
    # The prompts as a source of token ids: the pipeline pads them back to `max_tokens` as `ids`.
    prompt_source = [{"tokens": row[keep]} for row, keep in zip(ids, mask, strict=True)]

    def image_embeddings(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      return {"embedding": task.embed(variables, {image: batch[image]})[image]}

    def text_embeddings(variables: Variables, batch: Batch) -> dict[str, jax.Array]:
      inputs = {text: batch["text"], f"{text}_mask": batch["text_mask"]}
      return {"embedding": task.embed(variables, inputs)[text]}

    settings = {"batch_size": context.batch_size, "max_tokens": context.max_tokens}
    self.images = ExampleOutputs(image_embeddings, context.par, source, split=split, **settings)
    self.prompts = ExampleOutputs(
      text_embeddings, context.par, prompt_source, split=f"{split} zero-shot prompts", **settings
    )
    self._labels: np.ndarray | None = None

  @property
  def labels(self) -> np.ndarray:
    """The split's class indices (read once: they do not change with the parameters)."""
    if self._labels is None:
      labels = feature_values(self.source, self.label, split=self.split).astype(np.int64).reshape(-1)
      if labels.size and not (labels.min() >= 0 and labels.max() < len(self.classnames)):
        raise ConfigError(
          f"zero_shot: feature {self.label!r} of {self.split!r} holds class indices outside "
          f"0..{len(self.classnames) - 1} (one per class name)"
        )
      self._labels = labels
    return self._labels

  def scores(self, variables: Variables) -> np.ndarray:
    """[N, C] cosine similarities of every image of the split to every class's prompt embedding."""
    classes = class_embeddings(self.prompts(variables)["embedding"], len(self.classnames))
    return normalise(np.asarray(self.images(variables)["embedding"], np.float32)) @ classes.T

  def run(self, variables: Variables) -> Iterator[tuple[str, Metric]]:
    labels = self.labels
    scores = self.scores(variables)
    logging.info("zero-shot on %s: %d images, %d classes", self.split, len(labels), len(self.classnames))
    for k in TOP_K:
      if k <= len(self.classnames):
        yield f"{self.split}/zero_shot/top{k}", top_k_accuracy(scores, labels, k)


@evaluator("zero_shot", requires=Embedder)
def build(
  task: Embedder,
  context: EvalContext,
  source: Source,
  *,
  split: str,
  image: str = "image",
  text: str = "text",
  label: str = "label",
  classnames: Sequence[str] = (),
  templates: Sequence[str] = ("a photo of a {}.",),
) -> ZeroShotEvaluator:
  """Zero-shot top-1/top-5 accuracy against prompts naming each class (CLIP's prompt ensembling)."""
  templates = check_templates(templates)
  check_modality(task, image, "image", "zero_shot")
  check_modality(task, text, "text", "zero_shot")
  if image == text:
    raise ConfigError(f"zero_shot: image and text name the same modality {image!r}")
  return ZeroShotEvaluator(
    task,
    context,
    source,
    split=split,
    image=image,
    text=text,
    label=label,
    classnames=class_names(classnames, context, label),
    templates=templates,
  )
