"""The input pipeline alone, no model: training batches per second from encoded images and captions.

  python scripts/make_caption_folder.py --out=/tmp/shapes224 --num=5000 --size=224
  python scripts/input_benchmark.py --manual_dir=/tmp/shapes224 --workers=2 --out=docs/results/input

Prepares the folder with the `captioned` builder (images kept as their JPEG bytes) and reads training
batches as a run with `dataset.image_size` and random-resized crops does: JPEG decode, crop and resize to
`--image_size`, per-channel normalisation (CLIP's statistics), captions tokenized, in `--workers`
processes (0: in this one). It reports images per second over `--batches` batches after `--warmup`, and
where the time goes: each stage timed alone on one core, per image.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmlearn import data  # noqa: E402
from mmlearn.data import pipeline, preprocess  # noqa: E402
from mmlearn.data.tokenizer_choice import TokenizerChoice  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

flags.DEFINE_string("manual_dir", None, "A folder with images/ and manifest.csv (make_caption_folder.py).")
flags.DEFINE_string("data_dir", None, "Where the prepared dataset goes (default: $MMLEARN_DATA_DIR).")
flags.DEFINE_integer("image_size", 224, "Side of the crops.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("workers", 2, "Processes building batches (0: this process).")
flags.DEFINE_integer("warmup", 5, "Batches read before timing (worker start-up).")
flags.DEFINE_integer("batches", 60, "Batches timed.")
flags.DEFINE_bool("random_crops", True, "Random-resized crops (else centre crops).")
flags.DEFINE_string("out", None, "Directory for input_benchmark.json/.md (none: print only).")
flags.mark_flag_as_required("manual_dir")
FLAGS = flags.FLAGS


def stage_times(view: preprocess.ExampleView, size: int, n: int = 200) -> dict[str, float]:
  """Milliseconds per image of each stage alone, in this process (one core)."""
  records = [view.records[i] for i in range(min(n, len(view)))]
  decoder, rng = view.decoders["image"], np.random.default_rng(0)
  times = {}
  start = time.perf_counter()
  images = [decoder(r["image"]) for r in records]
  times["decode"] = time.perf_counter() - start
  start = time.perf_counter()
  crops = [preprocess.random_resized_crop(image, size, rng) for image in images]
  times["crop + resize"] = time.perf_counter() - start
  assert view.tokenizer is not None
  start = time.perf_counter()
  for r in records:
    view.tokenizer.encode(preprocess.caption_text(r["caption"]))
  times["tokenize"] = time.perf_counter() - start
  batch = {"image": np.stack(crops)}
  start = time.perf_counter()
  preprocess.normalise_batch(batch, view.image_mean, view.image_std)
  times["normalise"] = time.perf_counter() - start
  start = time.perf_counter()
  [view.records[i] for i in range(len(records))]
  times["read record"] = time.perf_counter() - start
  return {stage: 1e3 * seconds / len(records) for stage, seconds in times.items()}


def main(argv: list[str]) -> None:
  del argv
  reading = data.Reading(
    tokenizer=TokenizerChoice("word"),
    image_size=FLAGS.image_size,
    image_mean=CLIP_MEAN,
    image_std=CLIP_STD,
    workers=FLAGS.workers,
  )
  sources, _ = data.load_sources(
    "captioned",
    config="input_benchmark",
    data_dir=FLAGS.data_dir,
    manual_dir=FLAGS.manual_dir,
    options={"image_shape": None},
    splits=("train",),
    reading=reading,
  )
  train = sources["train"]
  iterator = pipeline.train_iterator(
    train,
    batch_size=FLAGS.batch_size,
    seed=0,
    max_tokens=16,
    memory_bytes=0,
    random_crops=FLAGS.random_crops,
    workers=FLAGS.workers,
  )
  for _ in range(FLAGS.warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  close = getattr(iterator, "close", None)
  if close is not None:  # Stops the workers, which would otherwise keep prefetching while stages are timed.
    close()
  assert batch["image"].shape == (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)
  rate = FLAGS.batches * FLAGS.batch_size / seconds
  stages = stage_times(train, FLAGS.image_size)
  result = {
    "images_per_s": rate,
    "workers": FLAGS.workers,
    "batch_size": FLAGS.batch_size,
    "image_size": FLAGS.image_size,
    "random_crops": FLAGS.random_crops,
    "cpus": os.cpu_count(),
    "stage_ms_per_image": stages,
  }
  lines = [
    f"input pipeline: {rate:,.0f} images/s ({FLAGS.workers} workers, batch {FLAGS.batch_size}, "
    f"{FLAGS.image_size} px, {'random-resized' if FLAGS.random_crops else 'centre'} crops, "
    f"{os.cpu_count()} CPUs)",
    "",
    "| stage (one core, alone) | ms per image |",
    "| --- | --- |",
    *(f"| {stage} | {ms:.3f} |" for stage, ms in stages.items()),
    f"| sum | {sum(stages.values()):.3f} |",
  ]
  print("\n".join(lines))
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "input_benchmark.json"), "w") as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(FLAGS.out, "input_benchmark.md"), "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
