"""Writes a folder of generated JPEG images with captions and a manifest: a dataset of any size to measure on.

  python scripts/make_caption_folder.py --out=/data/shapes224 --num=40000 --size=224
  python scripts/make_caption_folder.py --out=/data/shapes224_tars --num=40000 --tar_shards=40

Each image shows one to three coloured shapes on a textured background, and its caption says what is
where ("a large red circle at the top left and a small blue square ..."); the label is the first shape's
colour and kind (12 classes). Image `i` depends only on `--seed` and `i`, so any subset or number of
processes writes the same files. Without `--tar_shards` the output is `images/<i>.jpg` and a
`manifest.csv` (image, caption, label: the `captioned` builder's input); with it, WebDataset tar shards
`shard-<k>.tar` of `<i>.jpg` + `<i>.txt` + `<i>.cls` (the `tarshards` builder's), nothing else on disk.
"""

import csv
import io
import multiprocessing
import os
import tarfile

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

COLOURS = {"red": (210, 50, 40), "green": (40, 170, 60), "blue": (40, 70, 210)}
KINDS = ("circle", "square", "triangle", "bar")
PLACES = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "centre"}
PLACES.update({(1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"})

flags.DEFINE_string("out", None, "Output directory (created).")
flags.DEFINE_integer("num", 1000, "How many images.")
flags.DEFINE_integer("size", 224, "Image side in pixels.")
flags.DEFINE_integer("quality", 90, "JPEG quality.")
flags.DEFINE_integer("seed", 0, "Generator seed.")
flags.DEFINE_integer("tar_shards", 0, "> 0: write this many WebDataset tar shards instead of a folder.")
flags.DEFINE_integer("processes", 2, "Processes that draw and encode.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def draw(index: int, size: int, seed: int, quality: int) -> tuple[bytes, str, str]:
  """(JPEG bytes, caption, label) of image `index`."""
  rng = np.random.default_rng([seed, index])
  base = rng.integers(60, 200, 3)
  noise = rng.normal(0, 18, (size // 8, size // 8, 3))  # Coarse texture, as a photo's background.
  texture = np.kron(noise, np.ones((8, 8, 1)))[:size, :size]
  ramp = np.linspace(-25, 25, size)[None, :, None]
  picture = Image.fromarray(np.clip(base + texture + ramp, 0, 255).astype(np.uint8))
  pen = ImageDraw.Draw(picture)
  phrases, label = [], ""
  cells = rng.permutation(9)[: rng.integers(1, 4)]
  for n, cell in enumerate(cells):
    row, col = divmod(int(cell), 3)
    colour, kind = list(COLOURS)[rng.integers(3)], KINDS[rng.integers(4)]
    large = bool(rng.integers(2))
    radius = size * (0.14 if large else 0.08)
    cx, cy = (col + 0.5) * size / 3, (row + 0.5) * size / 3
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = tuple(int(c) for c in COLOURS[colour])
    if kind == "circle":
      pen.ellipse(box, fill=fill)
    elif kind == "square":
      pen.rectangle(box, fill=fill)
    elif kind == "triangle":
      pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
      pen.rectangle((cx - radius, cy - radius / 3, cx + radius, cy + radius / 3), fill=fill)
    phrases.append(f"a {'large' if large else 'small'} {colour} {kind} at the {PLACES[(row, col)]}")
    if n == 0:
      label = f"{colour}_{kind}"
  out = io.BytesIO()
  picture.save(out, "JPEG", quality=quality)
  return out.getvalue(), " and ".join(phrases), label


def _draw(job: tuple[int, int, int, int]) -> tuple[bytes, str, str]:
  return draw(*job)


def main(argv: list[str]) -> None:
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  jobs = ((i, FLAGS.size, FLAGS.seed, FLAGS.quality) for i in range(FLAGS.num))
  with multiprocessing.get_context("spawn").Pool(FLAGS.processes) as pool:
    drawn = pool.imap(_draw, jobs, chunksize=64)
    if FLAGS.tar_shards:
      per_shard = -(-FLAGS.num // FLAGS.tar_shards)
      for shard in range(FLAGS.tar_shards):
        with tarfile.open(os.path.join(FLAGS.out, f"shard-{shard:05d}.tar"), "w") as tar:
          for i in range(shard * per_shard, min((shard + 1) * per_shard, FLAGS.num)):
            image, caption, label = next(drawn)
            for name, content in (
              (f"{i}.jpg", image),
              (f"{i}.txt", caption.encode()),
              (f"{i}.cls", label.encode()),
            ):
              info = tarfile.TarInfo(name)
              info.size = len(content)
              tar.addfile(info, io.BytesIO(content))
    else:
      os.makedirs(os.path.join(FLAGS.out, "images"), exist_ok=True)
      with open(os.path.join(FLAGS.out, "manifest.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for i, (image, caption, label) in enumerate(drawn):
          with open(os.path.join(FLAGS.out, "images", f"{i}.jpg"), "wb") as g:
            g.write(image)
          writer.writerow([f"images/{i}.jpg", caption, label])
  print(f"wrote {FLAGS.num} images of {FLAGS.size} px to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
