"""A template for a hand-written dataset builder: copy this file into your own package and edit it.

For images and captions (and labels, audio) listed in a CSV or JSON-lines manifest, the `captioned`
builder needs no code at all, nor does the `tarshards` builder for WebDataset tar shards (see
docs/datasets.md). Write a builder when your data needs its own reading or generation. What one needs,
all below:

1. a subclass of `LocalBuilder` (it supplies the TFDS boilerplate and the preparation: see
   `mmlearn/data/builder.py`), registered by name with `@DATASETS.register(...)`; give the class a name
   no TFDS dataset has;
2. `VERSION` (bump it when the stored data changes, or the old files are silently reused);
3. `features()`: what an example holds. The pipeline reads `image` / `audio` (uint8 [H, W, C], as here,
   or their encoded bytes with a decoder in `decoders()`, as `captioned` stores them), `caption` (text,
   tokenized by `config.dataset.tokenizer`) or `tokens` (int32 ids, 0 = padding, with a `TOKENIZER`),
   and `label` (a `ClassLabel`);
4. `_split_generators` -> `{split: generator}`; `train` is required, the evaluation splits are
   `config.dataset.eval_splits` (default validation and test). A builder whose examples are costly to
   make writes `split_plans` instead, so they are encoded in `config.dataset.workers` processes;
5. `_generate_examples` yielding `(key, example)`: records are written in the order yielded, so element
   i of a split is the i-th example you yielded (the key is TFDS's form; keep it the example's index).

`LocalBuilder` prepares it with `mmlearn.data.prepare`, as it does the built-in builders: ArrayRecord
shards written in the order yielded, resumable after a kill, one preparation at a time.

Then name your module in the config, so the trainer and every tool that reads the run back import it:

    config.imports = ("my_lab.datasets",)        # its directory above `my_lab` on PYTHONPATH
    config.dataset.name = "my_folders"
    config.dataset.manual_dir = "/data/my_folders"

This example reads an image-folder layout, `<manual_dir>/<split>/<class name>/<image file>`, with the
class names fixed below (declared in advance: the features are known before any file is read). It is not
imported by mmlearn itself, so nothing named "my_folders" is registered until your copy is imported.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data.builder import LocalBuilder
from mmlearn.data.captioned import read_image
from mmlearn.data.registry import DATASETS

CLASS_NAMES = ("cat", "dog")  # Edit: your classes, in label order.
IMAGE_SHAPE = (16, 16, 3)  # Edit: every image is resized to this.
SPLITS = ("train", "validation", "test")


@DATASETS.register("my_folders")
class MyFolders(LocalBuilder):
  """Images sorted into one folder per class and split (the first docstring paragraph is the
  dataset's description)."""

  VERSION = tfds.core.Version("1.0.0")

  def features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
      {
        "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding="bytes"),
        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
      }
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(os.path.join(self.manual_dir, split)) for split in SPLITS}

  def _generate_examples(self, directory: str):
    index = 0
    for label, name in enumerate(CLASS_NAMES):
      folder = os.path.join(directory, name)
      for filename in sorted(os.listdir(folder)):  # Sorted: the same files give the same records.
        image = read_image(os.path.join(folder, filename), IMAGE_SHAPE, where=folder)
        yield index, {"image": image, "label": label}
        index += 1
