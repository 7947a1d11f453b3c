"""A builder whose preparation a test can interrupt for real, and a command that prepares it.

    python tests/data/prepare_check.py DATA_DIR [--kill_at=N] [--file_size_limit=BYTES]

`--kill_at=N` sends SIGKILL to the preparing process when it encodes example N (a kill -9 at a known
point); `--file_size_limit` caps every file's size (RLIMIT_FSIZE: writes past it fail as on a full
disk). It prints the split sizes, and whether TensorFlow is installed and was imported.
"""

import functools
import importlib.util
import os
import signal
import sys

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data import prepare
from mmlearn.data.builder import LocalBuilder

SIZES = {"train": 300, "validation": 40}
EXAMPLES_PER_SHARD = 64  # Several shards per split, as a real dataset has thousands.


def make_example(index: int, kill_at: int = -1) -> dict:
  if index == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
  rng = np.random.default_rng(index)
  return {"x": rng.integers(0, 1000, 32).astype(np.int32), "text": f"example {index}", "label": index % 3}


class Counting(LocalBuilder, skip_registration=True):
  """Numbered examples made by a top-level function (so worker processes can make them too)."""

  VERSION = tfds.core.Version("1.0.0")
  EXAMPLES_PER_SHARD = EXAMPLES_PER_SHARD
  kill_at = -1

  def features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
      {
        "x": tfds.features.Tensor(shape=(32,), dtype=np.int32, encoding="bytes"),
        "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(num_classes=3),
      }
    )

  def split_plans(self, dl_manager) -> dict[str, prepare.SplitPlan]:
    del dl_manager
    offsets = {"train": 0, "validation": SIZES["train"]}
    encode = functools.partial(make_example, kill_at=self.kill_at)
    return {
      split: prepare.SplitPlan(range(offsets[split], offsets[split] + n), encode, num_examples=n)
      for split, n in SIZES.items()
    }


def prepare_counting(data_dir: str, *, kill_at: int = -1, workers: int = 0) -> Counting:
  builder = Counting(data_dir=data_dir, prepare_workers=workers)
  builder.kill_at = kill_at
  builder.download_and_prepare()
  return builder


def main(argv: list[str]) -> None:
  data_dir, options = argv[1], dict(a.removeprefix("--").split("=", 1) for a in argv[2:] if "=" in a)
  if "file_size_limit" in options:
    import resource  # noqa: PLC0415

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write past the limit fails instead of killing.
    limit = int(options["file_size_limit"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  from mmlearn.errors import USER_ERRORS, fail  # noqa: PLC0415

  try:
    builder = prepare_counting(data_dir, kill_at=int(options.get("kill_at", -1)))
  except USER_ERRORS as e:
    fail(e)
  print("examples", {split: info.num_examples for split, info in builder.info.splits.items()})
  print("tensorflow installed:", importlib.util.find_spec("tensorflow") is not None)
  print("tensorflow imported:", "tensorflow" in sys.modules)


if __name__ == "__main__":
  import prepare_check  # noqa: PLC0415 (the builder's module is named as in-process tests name it)

  prepare_check.main(sys.argv)
