"""Search a split of a trained retrieval run with a text query; prints the top k and saves a PNG grid.

  python scripts/retrieve.py --workdir=runs/clip --query="a large red circle in the top left" --top_k=8

Reads the run's resolved config (`WORKDIR/config.json`) and the state it reports (its best-validation
checkpoint where it selects one, else its latest), embeds every item of `--split` and the query, prints
the best `--top_k` items (score, attributes, caption) and saves their images as a grid (`--output`,
default `WORKDIR/retrieved.png`). The query is tokenized with the dataset's own tokenizer: a synthetic
dataset's closed vocabulary rejects an unknown word with one `error:` line and exit status 1 (as do a run
without a checkpoint and a run of another task); an open one (`captioned`, built from the training
captions) reads it as `<unk>`. Runs of datasets registered outside mmlearn work as long as the modules
in their `config.imports` are importable (on PYTHONPATH).
"""

import os
import sys

import matplotlib
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn import cli, data  # noqa: E402
from mmlearn import parallel as parallel_lib  # noqa: E402
from mmlearn.data import pipeline, tokenizers  # noqa: E402
from mmlearn.errors import USER_ERRORS, fail  # noqa: E402
from mmlearn.evaluators import retrieval  # noqa: E402
from mmlearn.runs import restore  # noqa: E402
from mmlearn.tasks.contract import Embedder  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished (or checkpointed) retrieval run.")
flags.DEFINE_string("query", None, "The text to search with (tokenized as the dataset's captions).")
flags.DEFINE_integer("top_k", 5, "How many items to print and draw.")
flags.DEFINE_string("split", "test", "The split to search.")
flags.DEFINE_string("output", None, "PNG grid of the retrieved images; default WORKDIR/retrieved.png.")
flags.mark_flags_as_required(["workdir", "query"])
FLAGS = flags.FLAGS

TEXT_MODALITY = pipeline.TOKEN_FEATURES["tokens"]


def load_run(config: ml_collections.ConfigDict, workdir: str, split: str):
  """(the split's source, dataset info, task, restored variables) of a retrieval run."""
  restore.require_task(config, "retrieval", workdir, "searching")
  sources, info, task, variables = restore.load_run(config, workdir, (split,))
  return sources[split], info, task, variables


def describe(example: dict, info) -> str:
  """`name=value` for every scalar and text feature (class names for ClassLabels), then the caption."""
  parts, caption = [], None
  for name, feature in info.features.items():
    value = example[name]
    if isinstance(feature, tfds.features.Text):
      text = value.decode() if isinstance(value, bytes) else str(value)
      if name == "caption":
        caption = text
      else:
        parts.append(f"{name}={text}")
    elif isinstance(feature, tfds.features.ClassLabel):
      parts.append(f"{name}={feature.int2str(int(value))}")
    elif np.ndim(value) == 0:
      parts.append(f"{name}={value}")
  return " ".join(parts) + (f'  "{caption}"' if caption else "")


def save_grid(path: str, images: list[np.ndarray], titles: list[str], query: str) -> None:
  columns = min(len(images), 5)
  rows = -(-len(images) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows + 0.4), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, title in zip(axes.flat, images, titles, strict=False):
    gray = image.shape[-1] == 1
    ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
    ax.set_title(title, fontsize=8)
  fig.suptitle(query, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def search(workdir: str, query: str, top_k: int, split: str, output: str) -> None:
  config = restore.read_config(workdir)
  query_batch = restore.text_batch(config, query, what="query")
  source, info, task, variables = load_run(config, workdir, split)
  assert isinstance(task, Embedder)  # A retrieval run's task (`require_task`).
  query_embedding = task.embed(variables, query_batch)[TEXT_MODALITY][0]
  (target,) = [m for m in task.modalities if m != TEXT_MODALITY]
  par = parallel_lib.DataParallel(config.parallel.mode)
  evaluator = retrieval.for_task(
    task, par, source, split=split, batch_size=config.eval_batch_size, max_tokens=config.dataset.max_tokens
  )
  items = evaluator.embed_split(variables)[target]
  scores = items @ np.asarray(query_embedding)
  best = np.argsort(-scores, kind="stable")[:top_k]
  print(f'query: "{query}" -> top {len(best)} of {len(scores):,} {split} {target}s')
  tokenizer = data.dataset_tokenizer(config.dataset)
  # An open vocabulary reads a word it never saw as <unk>; a closed one has already refused it.
  unknown = tokenizer.unknown_words(query) if isinstance(tokenizer, tokenizers.OpenWordTokenizer) else []
  if unknown:
    print(f"note: not in the training captions' vocabulary, read as <unk>: {', '.join(unknown)}")
  examples = [source[int(i)] for i in best]
  for rank, (i, example) in enumerate(zip(best, examples, strict=True), start=1):
    print(f"{rank:3d}. #{i:<6d} score {scores[i]:+.3f}  {describe(example, info)}")
  if target in info.features:
    titles = [f"{rank}. #{i} ({scores[i]:.2f})" for rank, i in enumerate(best, start=1)]
    save_grid(output, [np.asarray(ex[target]) for ex in examples], titles, query)
    print(f"saved {output}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.top_k <= 0:
    raise app.UsageError("--top_k must be positive")
  cli.quiet_library_logs()  # mmlearn's own lines stay (a long embedding pass logs its progress and ETA).
  output = FLAGS.output or os.path.join(FLAGS.workdir, "retrieved.png")
  try:
    search(FLAGS.workdir, FLAGS.query, FLAGS.top_k, FLAGS.split, output)
  except USER_ERRORS as e:
    fail(e)


if __name__ == "__main__":
  app.run(main)
