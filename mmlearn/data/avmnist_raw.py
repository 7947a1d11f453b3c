"""The raw ingredients of AV-MNIST and how they pair: MNIST idx files and FSDD recordings, read and checked.

The split of images (MNIST train 0-54,999 / 55,000-59,999 / t10k) and of recordings (by FSDD take), and
the seeded pairing of each image with a recording of its digit, are described in `mmlearn.data.avmnist`,
which builds the dataset from what this module reads.
"""

import dataclasses
import gzip
import os
import re
import zlib

import numpy as np

from mmlearn.data.spectrogram import NUM_SAMPLES, fit_to_window, read_wav
from mmlearn.errors import DataError

# ---- Raw files ----
MANUAL_DIR_ENV = "MMLEARN_AVMNIST_DIR"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
MNIST_FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
RECORDING_PATTERN = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav$")

# ---- Splits ----
SPLITS = ("train", "validation", "test")
NUM_TRAIN = 55_000  # MNIST train images [0, NUM_TRAIN) are `train`, the rest `validation`.
# FSDD recordings by take (0-49 in every speaker and digit); every take not listed here is a train take.
TEST_TAKES = range(0, 5)
VALIDATION_TAKES = range(5, 10)
assert not set(TEST_TAKES) & set(VALIDATION_TAKES)
NUM_CLASSES = 10

IMAGE_SIZE = 28


# ---- Reading raw files ----


def read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """A gzipped idx file (uint8 data) as an array; errors name the file instead of failing on a reshape."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: AV-MNIST raw file is missing")
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{path}: not a valid idx file (cannot decompress: {e})") from None
  if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != expected_ndim:
    raise DataError(f"{path}: not a valid idx file (bad magic number {data[:4].hex()})")
  header = 4 + 4 * expected_ndim
  dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim)]
  if len(data) != header + int(np.prod(dims)):
    raise DataError(f"{path}: not a valid idx file ({len(data) - header} data bytes for shape {dims})")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def parse_recording(name: str) -> tuple[int, str, int]:
  """(digit, speaker, take) of an FSDD file name such as `7_theo_12.wav`."""
  match = RECORDING_PATTERN.fullmatch(name)
  if not match:
    raise DataError(f"{name}: not an FSDD recording name ({{digit}}_{{speaker}}_{{take}}.wav)")
  return int(match[1]), match[2], int(match[3])


@dataclasses.dataclass
class RawData:
  """Everything read from the raw files; `waves` are the recordings, fitted to 1 s, in `recordings` order."""

  train_images: np.ndarray  # uint8 [60000, 28, 28]: train then validation.
  train_labels: np.ndarray
  test_images: np.ndarray  # uint8 [10000, 28, 28]
  test_labels: np.ndarray
  recordings: list[str]  # Sorted file names.
  waves: np.ndarray  # float32 [R, NUM_SAMPLES], zero-padded / cropped.
  lengths: np.ndarray  # int [R]: samples of each recording inside the 1 s window.


def manual_paths(root: str) -> tuple[dict[str, str], str]:
  """(MNIST file paths by `MNIST_FILES` key, FSDD recordings directory) of a manual directory."""
  mnist = {key: os.path.join(root, "mnist", name) for key, name in MNIST_FILES.items()}
  return mnist, os.path.join(root, "fsdd", "recordings")


def read_raw(mnist_paths: dict[str, str], recordings_dir: str) -> RawData:
  """Reads the four MNIST idx files (paths by `MNIST_FILES` key) and every FSDD wav; checks they fit."""
  arrays = {key: read_idx(path, 3 if key.endswith("images") else 1) for key, path in mnist_paths.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels) or labels.max() >= 10:
      raise DataError(
        f"{mnist_paths[f'{split}_images']} {images.shape} and {mnist_paths[f'{split}_labels']} "
        f"{labels.shape} are not matching MNIST images and labels"
      )
  if len(arrays["train_images"]) <= NUM_TRAIN:
    raise DataError(
      f"{mnist_paths['train_images']}: {len(arrays['train_images'])} images, need more than {NUM_TRAIN}"
    )
  if not os.path.isdir(recordings_dir):
    raise FileNotFoundError(f"{recordings_dir}: FSDD recordings directory is missing")
  recordings = sorted(n for n in os.listdir(recordings_dir) if n.endswith(".wav"))
  waves, lengths = [], []
  for name in recordings:
    parse_recording(name)
    wave_, length = fit_to_window(read_wav(os.path.join(recordings_dir, name)))
    waves.append(wave_)
    lengths.append(length)
  raw = RawData(
    train_images=arrays["train_images"],
    train_labels=arrays["train_labels"].astype(np.int64),
    test_images=arrays["test_images"],
    test_labels=arrays["test_labels"].astype(np.int64),
    recordings=recordings,
    waves=np.stack(waves) if waves else np.zeros((0, NUM_SAMPLES), np.float32),
    lengths=np.asarray(lengths, np.int64),
  )
  for split in SPLITS:
    missing = [d for d, pool in enumerate(recording_pools(raw, split)) if not len(pool)]
    if missing:
      raise DataError(
        f"{recordings_dir}: no {split} recordings ({split_takes_text(split)}) of digit(s) {missing}"
      )
  return raw


# ---- Splits and pairing ----


def split_images(raw: RawData, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The whole pool of (images, labels) of `split`."""
  if split == "train":
    return raw.train_images[:NUM_TRAIN], raw.train_labels[:NUM_TRAIN]
  if split == "validation":
    return raw.train_images[NUM_TRAIN:], raw.train_labels[NUM_TRAIN:]
  if split == "test":
    return raw.test_images, raw.test_labels
  raise DataError(f"unknown avmnist split {split!r}; known: {', '.join(SPLITS)}")


def take_split(take: int) -> str:
  """The split an FSDD take is heard in: `TEST_TAKES` test, `VALIDATION_TAKES` validation, any other train."""
  if take in TEST_TAKES:
    return "test"
  if take in VALIDATION_TAKES:
    return "validation"
  return "train"


def split_takes_text(split: str) -> str:
  """The takes of `split` in words, for error messages."""
  test, validation = (f"{r.start}-{r.stop - 1}" for r in (TEST_TAKES, VALIDATION_TAKES))
  return {"test": f"takes {test}", "validation": f"takes {validation}"}.get(
    split, f"takes other than {test} and {validation}"
  )


def recording_pools(raw: RawData, split: str) -> list[np.ndarray]:
  """Per digit, the indices (into `raw.recordings`, sorted) of the recordings `split` may use.

  The three splits' pools are disjoint and together hold every recording (see `take_split`).
  """
  if split not in SPLITS:
    raise DataError(f"unknown avmnist split {split!r}; known: {', '.join(SPLITS)}")
  parsed = [parse_recording(n) for n in raw.recordings]
  return [
    np.array([i for i, (d, _, take) in enumerate(parsed) if d == digit and take_split(take) == split], int)
    for digit in range(NUM_CLASSES)
  ]


def example_rng(seed: int, split: str, stream: int, index: int) -> np.random.Generator:
  """Independent generators per (seed, split, stream, index): stream 0 pairs recordings, 1 draws noise."""
  return np.random.default_rng([seed, SPLITS.index(split), stream, index])


def pair_recordings(labels: np.ndarray, pools: list[np.ndarray], seed: int, split: str) -> np.ndarray:
  """Recording index per example: the k-th example of digit d gets `pool_d[perm_d[k mod len(pool_d)]]`.

  Depends only on each example's rank among earlier examples of its digit, so a prefix of `labels` gets
  a prefix of the assignment (the tiny configs are prefixes of the full ones).
  """
  assigned = np.empty(len(labels), int)
  for digit, pool in enumerate(pools):
    rows = np.flatnonzero(labels == digit)
    perm = example_rng(seed, split, 0, digit).permutation(len(pool))
    assigned[rows] = pool[perm[np.arange(len(rows)) % len(pool)]]
  return assigned
