"""avmnist: AV-MNIST (CentralNet, Vielzeuf et al. 2018; MultiBench, Liang et al. 2021), built from raw files.

Each example pairs an MNIST digit image with a spoken recording of the same digit from the Free Spoken
Digit Dataset (FSDD). Both modalities are degraded on purpose, so neither alone is easy and fusing helps:

* `image`: 75% of the pixel energy is removed, as in CentralNet/MultiBench: a PCA fitted on the 55,000
  training images keeps the leading components that explain 25% of the variance; the image is
  reconstructed from them (mean included), clipped to [0, 255], uint8 [28, 28, 1].
* `audio`: the recording (zero-padded / cropped to 1 s at 8 kHz), with white Gaussian noise at `snr_db`
  (config `noisy`, the default) or without (config `clean`), as a 112 x 112 log-power spectrogram
  (frequency x time, bin 0 = 0 Hz in row 0), uint8 [112, 112, 1] (see `log_power_spectrogram`).

Splits: train = MNIST train images 0-54,999, validation = MNIST train 55,000-59,999, test = MNIST t10k.
FSDD recordings are split by take: takes 0-4 feed test, takes 5-9 validation, takes 10-49 train, so each
recording is heard in exactly one split. Validation has recordings of its own so that it can select
audio-related choices (the noise level, the audio model) honestly, without having heard its recordings in
training. The test takes are unchanged since 1.0.0, so every test image still hears the same recording
and test results stay comparable (its bytes change a little with the spectrogram scale). The split is by
take within each speaker and digit, so every FSDD speaker (all six speak takes 0-49 of every digit) is
heard in every split: the splits hold new recordings of known speakers, not new speakers.
Within a split, the k-th image of digit d gets recording `perm_d[k mod n_d]` of a seeded permutation of
that split's n_d recordings of d (so every recording is reused about equally often), and every example
draws fresh noise from a generator seeded by (seed, split, example index): a reused recording is never
heard with the same noise twice. Because both depend only on an example's position, the `tiny` configs
are exactly the first examples of the full ones. The PCA and the spectrogram scale are always fitted on
the full training pool (MNIST train images 0-54,999; FSDD takes 10-49), so every config shares them.

Everything that ends in a rounding to uint8 (PCA covariance and reconstruction, noise, spectrum, power,
dB, the spectrogram scale) is computed in float64. Last bits differ between CPUs (the SIMD width picks
the BLAS and math kernels) and, in a matrix product, with a row's place in the blocking (so with the
batch size); rounding to 256 levels turns such a difference into a different byte when a value lies
that close to a boundary (x.5), which in float32 happened often enough to differ between builds.
float64 makes the differences ~1e8 times smaller, so a whole build is expected to differ in far less
than one byte. The spectrogram's FFT transforms each frame alone, and the PCA covariance is exact (see
`pixel_covariance`).

Raw files (no preprocessing; layout of `/work/shared/data/avmnist`-style directories):

    <dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <dir>/fsdd/recordings/{digit}_{speaker}_{take}.wav        (8 kHz mono 16-bit PCM)

The directory is, in order: the builder's `manual_dir` argument, the `manual_dir` of the TFDS
`DownloadConfig` (`mmlearn.data.load_sources(..., manual_dir=...)` passes it), the environment variable
`MMLEARN_AVMNIST_DIR`. With none of them, TFDS downloads the official files (`MNIST_URL`, `FSDD_URL`).

Changing `DEFAULT_SNR_DB` (or any constant here) changes the data but not the prepared directory's name:
bump `VERSION` or delete the prepared `avmnist/` directory, or the old files are silently reused.
"""

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data.avmnist_raw import (
  FSDD_URL,
  IMAGE_SIZE,
  MANUAL_DIR_ENV,
  MNIST_FILES,
  MNIST_URL,
  NUM_CLASSES,
  RawData,
  example_rng,
  manual_paths,
  pair_recordings,
  read_raw,
  recording_pools,
  split_images,
)
from mmlearn.data.builder import LocalBuilder
from mmlearn.data.info import local_dataset_info
from mmlearn.data.registry import DATASETS
from mmlearn.data.spectrogram import (
  NUM_SAMPLES,
  SPEC_SIZE,
  SpectrogramScale,
  fit_spectrogram_scale,
  log_power_spectrogram,
  signal_power,
)
from mmlearn.errors import ConfigError, DataError

# ---- Noise: the one number to calibrate (audio-only accuracy) ----
DEFAULT_SNR_DB = -8.0  # Signal-to-noise ratio of the `noisy` configs, in dB.

# ---- Image ----
VARIANCE_KEPT = 0.25  # CentralNet's "75% of the energy removed".

_PCA_CHUNK = 4096  # Images per float64 Gram product: ~25 MB.
_CHUNK = 1024  # Examples processed at once: bounds the float64 temporaries to ~450 MB.


# ---- Image: PCA keeping 25% of the variance ----


@dataclasses.dataclass
class ImagePCA:
  mean: np.ndarray  # float64 [784]
  components: np.ndarray  # float64 [784, k], orthonormal columns, leading first.
  explained: np.ndarray  # float64 [784]: every component's fraction of the total variance, descending.

  @property
  def num_kept(self) -> int:
    return self.components.shape[1]

  def rebuild(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float64 [N, 784]: the images rebuilt from the kept components (and the mean)."""
    x = images.reshape(len(images), -1).astype(np.float64) - self.mean
    return (x @ self.components) @ self.components.T + self.mean

  def degrade(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28, 1]: `rebuild`, rounded and clipped to [0, 255]."""
    rebuilt = self.rebuild(images)
    return np.clip(np.rint(rebuilt), 0, 255).astype(np.uint8).reshape(len(images), IMAGE_SIZE, IMAGE_SIZE, 1)


def pixel_covariance(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [784], covariance [784, 784]) of uint8 `images`, float64, the same bits on every CPU.

  The products and partial sums of the uncentred Gram matrix are integers below 2**53 (for up to ~370,000
  images), so its float64 BLAS product is exact whatever the kernel, blocking or summation order; the
  covariance (n * Gram - sum sum^T) / n^2 is then exact up to its one final division. Centring first, as
  usual, would make every product inexact and the result CPU-dependent.
  """
  x = images.reshape(len(images), -1)
  n = len(x)
  total = x.sum(0, dtype=np.int64).astype(np.float64)
  gram = np.zeros((x.shape[1], x.shape[1]))
  for start in range(0, n, _PCA_CHUNK):
    chunk = x[start : start + _PCA_CHUNK].astype(np.float64)
    gram += chunk.T @ chunk
  return total / n, (n * gram - np.outer(total, total)) / (n * n)


def fit_image_pca(train_images: np.ndarray, variance_kept: float = VARIANCE_KEPT) -> ImagePCA:
  """PCA of `train_images` (the training split only); keeps the fewest components reaching `variance_kept`.

  Eigendecomposition of the 784 x 784 covariance: seconds, where an SVD of 55,000 x 784 takes minutes.
  """
  mean, covariance = pixel_covariance(train_images)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  order = np.argsort(eigenvalues)[::-1]
  explained = np.clip(eigenvalues[order], 0, None) / np.clip(eigenvalues, 0, None).sum()
  num_kept = int(np.searchsorted(np.cumsum(explained), variance_kept) + 1)
  return ImagePCA(mean=mean, components=eigenvectors[:, order[:num_kept]], explained=explained)


# ---- Audio: noise and spectrogram ----


def add_noise(
  waves: np.ndarray, power: np.ndarray, snr_db: float, seed: int, split: str, indices: np.ndarray
) -> np.ndarray:
  """`waves` plus white Gaussian noise at `snr_db` over the whole 1 s window, example `indices[j]`'s seed.

  float64 [B, NUM_SAMPLES]. The noise is drawn as float32, at half the cost: a draw involves no rounding
  that depends on the CPU, only the sum does.
  """
  std = np.sqrt(np.maximum(power, 1e-12) / 10.0 ** (snr_db / 10.0))
  draws = [example_rng(seed, split, 1, int(i)).standard_normal(NUM_SAMPLES, np.float32) for i in indices]
  noise = np.stack(draws)
  return np.asarray(waves, np.float64) + std[:, None] * noise


# ---- Examples ----


@dataclasses.dataclass
class Preprocessing:
  """What is fitted on the training pool, once per build."""

  pca: ImagePCA
  scale: SpectrogramScale


def fit_preprocessing(raw: RawData) -> Preprocessing:
  """PCA on the train split's images; spectrogram scale on the clean train recordings (not validation's)."""
  train_recordings = np.concatenate(recording_pools(raw, "train"))
  return Preprocessing(
    pca=fit_image_pca(split_images(raw, "train")[0]),
    scale=fit_spectrogram_scale(raw.waves[np.sort(train_recordings)]),
  )


def iter_split(
  raw: RawData,
  prep: Preprocessing,
  split: str,
  *,
  num_examples: int | None = None,
  snr_db: float | None = DEFAULT_SNR_DB,
  seed: int = 0,
  chunk_size: int = _CHUNK,
) -> Iterator[dict[str, Any]]:
  """The first `num_examples` (None: all) examples of `split`, in chunks of `chunk_size` per-example arrays.

  Keys: image uint8 [n,28,28,1], audio uint8 [n,112,112,1], label int64 [n], recording (file names, list),
  snr_db float32 [n] (inf when `snr_db` is None: no noise). The bytes do not depend on `chunk_size`.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  images, labels = split_images(raw, split)
  if num_examples is not None:
    if not 0 < num_examples <= len(images):
      raise DataError(f"avmnist {split} has {len(images)} examples, asked for {num_examples}")
    images, labels = images[:num_examples], labels[:num_examples]
  assigned = pair_recordings(labels, recording_pools(raw, split), seed, split)
  for start in range(0, len(labels), chunk_size):
    rows = np.arange(start, min(start + chunk_size, len(labels)))
    recording = assigned[rows]
    waves = raw.waves[recording]
    if snr_db is not None:
      waves = add_noise(waves, signal_power(waves, raw.lengths[recording]), snr_db, seed, split, rows)
    yield {
      "image": prep.pca.degrade(images[rows]),
      "audio": prep.scale.quantise(log_power_spectrogram(waves)),
      "label": labels[rows],
      "recording": [raw.recordings[r] for r in recording],
      "snr_db": np.full(len(rows), np.inf if snr_db is None else snr_db, np.float32),
    }


def generate_split(raw: RawData, prep: Preprocessing, split: str, **kwargs: Any) -> dict[str, Any]:
  """`iter_split`'s chunks joined into one dict (for small splits and tests)."""
  chunks = list(iter_split(raw, prep, split, **kwargs))
  return {
    key: sum((c[key] for c in chunks), []) if key == "recording" else np.concatenate([c[key] for c in chunks])
    for key in chunks[0]
  }


# ---- TFDS builder ----


@dataclasses.dataclass(eq=False)
class AvmnistConfig(tfds.core.BuilderConfig):
  """Noise (`snr_db`, None = clean), split sizes (None = the whole split) and the pairing/noise seed."""

  snr_db: float | None = DEFAULT_SNR_DB
  train_size: int | None = None
  validation_size: int | None = None
  test_size: int | None = None
  seed: int = 0

  def split_sizes(self) -> dict[str, int | None]:
    return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}


_TINY = {"train_size": 640, "validation_size": 160, "test_size": 320}


def features() -> tfds.features.FeaturesDict:
  """Plain tensors only: `tfds.features.Image` would PNG-encode, which needs TensorFlow.

  The arrays are stored as raw bytes: the default stores every uint8 as a protobuf int64, whose
  serialisation (~2.5 ms for one 112 x 112 spectrogram) would dominate the build.
  """
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8, encoding="bytes"),
      "audio": tfds.features.Tensor(shape=(SPEC_SIZE, SPEC_SIZE, 1), dtype=np.uint8, encoding="bytes"),
      "label": tfds.features.ClassLabel(names=[str(d) for d in range(NUM_CLASSES)]),
      "recording": tfds.features.Text(),
      "snr_db": tfds.features.Scalar(dtype=np.float32),
    }
  )


def resolve_manual_dir(manual_dir: str | None) -> str | None:
  """`manual_dir`, else `$MMLEARN_AVMNIST_DIR`, else None (download)."""
  return os.path.expanduser(os.fspath(manual_dir)) if manual_dir else os.environ.get(MANUAL_DIR_ENV) or None


@DATASETS.register("avmnist")
class Avmnist(LocalBuilder):
  """TFDS builder for avmnist; element `i` of a split is example `i` of its `iter_split`."""

  VERSION = tfds.core.Version("1.4.0")
  RELEASE_NOTES = {
    "1.0.0": "First release (noisy: -6 dB SNR).",
    "1.1.0": "noisy: -7 dB SNR, recalibrated for the He-initialised audio LeNet.",
    "1.2.0": "noisy: -8 dB SNR, recalibrated for the audio LeNet on mean-centred spectrograms.",
    "1.3.0": "float64 preprocessing: stored bytes independent of batch size, row position and CPU.",
    "1.4.0": "Validation audio from FSDD takes 5-9, heard in neither train nor test (train: takes 10-49, "
    "test: takes 0-4 as before); spectrogram scale fitted on the train takes 10-49 only.",
  }
  BUILDER_CONFIGS = [
    AvmnistConfig(
      name="noisy", description=f"55,000 / 5,000 / 10,000; audio noise at {DEFAULT_SNR_DB} dB SNR."
    ),
    AvmnistConfig(name="clean", description="55,000 / 5,000 / 10,000; no audio noise.", snr_db=None),
    AvmnistConfig(name="tiny", description="640 / 160 / 320, noisy, for tests.", **_TINY),
    AvmnistConfig(name="tiny_clean", description="640 / 160 / 320, clean, for tests.", snr_db=None, **_TINY),
  ]

  @classmethod
  def make_config(
    cls, config: str | None, options: Mapping[str, Any], *, manual_dir: str | None, data_dir: str
  ) -> str | AvmnistConfig | None:
    """A named config, or with `dataset.options.snr_db` that config at another noise level.

    The noise level is the one number the benchmark is calibrated by (on validation audio-only accuracy,
    see docs/datasets.md), so it is an option: `--config.dataset.options.snr_db=-9` prepares
    `noisy_snr_m9` beside `noisy`. None, or the named config's own level, is the named config.
    """
    del manual_dir, data_dir
    unknown = sorted(set(options) - {"snr_db"})
    if unknown:
      raise ConfigError(f"dataset 'avmnist' takes only dataset.options.snr_db; got {', '.join(unknown)}")
    snr_db = options.get("snr_db")
    if snr_db is None:
      return config
    if isinstance(snr_db, bool) or not isinstance(snr_db, int | float):
      raise ConfigError(f"dataset.options.snr_db must be a number of dB, got {snr_db!r}")
    names = {c.name: c for c in cls.BUILDER_CONFIGS}
    base = names.get(config or "noisy")
    if base is None:
      raise ConfigError(f"dataset 'avmnist' has no config {config!r}; configs: {', '.join(names)}")
    if base.snr_db == snr_db:
      return base.name
    level = f"snr_{snr_db:g}".replace("-", "m").replace(".", "p")
    return dataclasses.replace(
      base,
      name=f"{base.name}_{level}",
      description=f"{base.name}, audio noise at {snr_db} dB SNR (dataset.options.snr_db).",
      snr_db=float(snr_db),
    )

  def _info(self) -> tfds.core.DatasetInfo:
    return local_dataset_info(
      self, doc=__doc__, features=features(), homepage="https://github.com/pliang279/MultiBench"
    )

  def _raw_paths(self, dl_manager) -> tuple[dict[str, str], str]:
    """(MNIST file paths, FSDD recordings directory): the manual directory's, else downloaded ones."""
    manual_dir = resolve_manual_dir(self._manual_dir)
    if manual_dir:
      return manual_paths(manual_dir)
    mnist = dl_manager.download({key: MNIST_URL + name for key, name in MNIST_FILES.items()})
    fsdd = dl_manager.download_and_extract(FSDD_URL)
    recordings = os.path.join(os.fspath(fsdd), "free-spoken-digit-dataset-master", "recordings")
    return {key: os.fspath(path) for key, path in mnist.items()}, recordings

  def _split_generators(self, dl_manager):
    raw = read_raw(*self._raw_paths(dl_manager))
    prep = fit_preprocessing(raw)
    config = self.builder_config
    return {
      split: self._generate_examples(raw, prep, split, size, config)
      for split, size in config.split_sizes().items()
    }

  def _generate_examples(self, raw: RawData, prep: Preprocessing, split: str, size: int | None, config):
    index = 0
    for chunk in iter_split(raw, prep, split, num_examples=size, snr_db=config.snr_db, seed=config.seed):
      for j in range(len(chunk["label"])):
        yield index, {key: values[j] for key, values in chunk.items()}
        index += 1
