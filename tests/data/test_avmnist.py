"""avmnist from the real raw files: the tiny build, PCA, spectrograms, pairing, noise, raw-file errors.

The determinism tests compare bytes exactly: the builder rounds float64 values to uint8, and a value
within a kernel's rounding error of a boundary (x.5) would make the bytes depend on the batch size, the
row position or the CPU. An independent algorithm agreeing byte for byte shows no value is that close.
"""

import functools
import gzip
import os
import re
import shutil
import wave

import numpy as np
import pytest

from conftest import REPO
from mmlearn import data
from mmlearn.data import avmnist as A
from mmlearn.data import avmnist_raw as R
from mmlearn.data import spectrogram as S
from mmlearn.errors import ConfigError, DataError

RAW_DIR = os.environ.get(R.MANUAL_DIR_ENV) or os.path.join(REPO, "..", "shared", "data", "avmnist")
pytestmark = pytest.mark.skipif(
  not os.path.isdir(RAW_DIR),
  reason=f"AV-MNIST raw files not found: set ${R.MANUAL_DIR_ENV} (tried {os.path.abspath(RAW_DIR)})",
)
TINY = {"train": 640, "validation": 160, "test": 320}
# The FSDD takes of each split, written out here (not taken from the module) so a changed layout fails.
SPLIT_TAKES = {"train": set(range(10, 50)), "validation": set(range(5, 10)), "test": set(range(0, 5))}


@pytest.fixture(scope="module")
def raw():
  return R.read_raw(*R.manual_paths(RAW_DIR))


@pytest.fixture(scope="module")
def prep(raw):
  return A.fit_preprocessing(raw)


@pytest.fixture(scope="module")
def tiny(raw, prep):
  return {split: A.generate_split(raw, prep, split, num_examples=n) for split, n in TINY.items()}


@pytest.fixture(scope="module")
def tiny_clean_test(raw, prep):
  return A.generate_split(raw, prep, "test", num_examples=TINY["test"], snr_db=None)


@pytest.fixture(scope="module")
def built(avmnist_data_dir):
  return data.load_sources("avmnist", config="tiny", data_dir=avmnist_data_dir, manual_dir=RAW_DIR)


def takes(recordings) -> np.ndarray:
  return np.array([R.parse_recording(r)[2] for r in recordings])


def digits(recordings) -> np.ndarray:
  return np.array([R.parse_recording(r)[0] for r in recordings])


# ---- The TFDS build ----


def test_tiny_build_has_the_spec_and_matches_the_generator(built, tiny):
  sources, info = built
  assert {s: len(sources[s]) for s in TINY} == TINY
  assert info.features["label"].names == [str(d) for d in range(10)]
  for split, expected in tiny.items():
    for i in range(0, TINY[split], 7):
      example = sources[split][i]
      assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
      assert example["audio"].dtype == np.uint8 and example["audio"].shape == (112, 112, 1)
      np.testing.assert_array_equal(example["image"], expected["image"][i])
      np.testing.assert_array_equal(example["audio"], expected["audio"][i])
      assert example["label"] == expected["label"][i]
      assert example["recording"].decode() == expected["recording"][i]
      assert example["snr_db"] == np.float32(A.DEFAULT_SNR_DB)


def test_generation_is_deterministic_and_tiny_is_a_prefix_of_full(raw, prep, tiny):
  again = A.generate_split(raw, prep, "test", num_examples=TINY["test"])
  for key in ("image", "audio", "label"):
    np.testing.assert_array_equal(again[key], tiny["test"][key])
  assert again["recording"] == tiny["test"]["recording"]
  # A longer build's first examples are the tiny ones (pairing by per-digit rank, noise by index).
  longer = A.generate_split(raw, prep, "test", num_examples=TINY["test"] + 64)
  np.testing.assert_array_equal(longer["audio"][: TINY["test"]], tiny["test"]["audio"])
  other_seed = A.generate_split(raw, prep, "test", num_examples=64, seed=1)
  assert other_seed["recording"] != tiny["test"]["recording"][:64]


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1024])
def test_bytes_do_not_depend_on_the_chunk_size_or_row_position(raw, prep, tiny, tiny_clean_test, chunk_size):
  # Each chunk size puts every example at another row of the PCA product and the FFT batch (the fixtures
  # use one chunk). At most 40 chunks: tiny products are slow where BLAS threads compete for the cores.
  n = min(TINY["test"], 40 * chunk_size)
  for snr_db, expected in ((A.DEFAULT_SNR_DB, tiny["test"]), (None, tiny_clean_test)):
    got = A.generate_split(raw, prep, "test", num_examples=n, snr_db=snr_db, chunk_size=chunk_size)
    for key in ("image", "audio", "label"):
      np.testing.assert_array_equal(got[key], expected[key][:n])
    assert got["recording"] == expected["recording"][:n]
  n = min(TINY["validation"] - 3, 40 * chunk_size)  # A prefix that ends in a short chunk.
  prefix = A.generate_split(raw, prep, "validation", num_examples=n, chunk_size=chunk_size)
  for key in ("image", "audio"):
    np.testing.assert_array_equal(prefix[key], tiny["validation"][key][:n])


def dft_db(waves: np.ndarray) -> np.ndarray:
  """float64 dB spectrograms [B, bins, frames] by the DFT's definition as BLAS products, not an FFT."""
  frames = np.lib.stride_tricks.sliding_window_view(waves.astype(np.float64), S.N_FFT, axis=-1)[:, :: S.HOP]
  frames = frames.reshape(-1, S.N_FFT)  # One 2-D product per part: a stacked 3-D one is much slower.
  n = np.arange(S.N_FFT)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / S.N_FFT)
  angle = 2 * np.pi * np.outer(n, np.arange(S.N_FFT // 2 + 1)) / S.N_FFT
  real, imaginary = (frames @ (window[:, None] * f(angle)) for f in (np.cos, np.sin))
  power = (real**2 + imaginary**2).reshape(len(waves), -1, S.N_FFT // 2 + 1)
  return 10 * np.log10(np.maximum(power, 10 ** (S.POWER_FLOOR_DB / 10))).transpose(0, 2, 1)


def rounding_disagreement(a: np.ndarray, b: np.ndarray) -> float:
  """Sum of |a - b| over values not clipped to 0 or 255: the expected number of bytes rounded apart."""
  inside = (a > -0.5) & (a < 255.5)
  return float(np.abs(a - b)[inside].sum())


def test_stored_spectrograms_match_an_independent_float64_dft(raw, prep, tiny, tiny_clean_test):
  builds = [(split, A.DEFAULT_SNR_DB, examples) for split, examples in tiny.items()]
  builds.append(("test", None, tiny_clean_test))
  disagreement = 0.0
  for split, snr_db, examples in builds:
    for start in range(0, len(examples["label"]), 160):
      rows = np.arange(start, min(start + 160, len(examples["label"])))
      recording = np.array([raw.recordings.index(examples["recording"][i]) for i in rows])
      waves = raw.waves[recording]
      if snr_db is not None:
        waves = A.add_noise(waves, S.signal_power(waves, raw.lengths[recording]), snr_db, 0, split, rows)
      levels = prep.scale.levels(dft_db(waves))
      np.testing.assert_array_equal(
        np.clip(np.rint(levels), 0, 255).astype(np.uint8), examples["audio"][rows, ..., 0]
      )
      disagreement += rounding_disagreement(levels, prep.scale.levels(S.log_power_spectrogram(waves)))
  # Far below one byte (a float32 DFT makes it tens): another CPU's kernels will store the same bytes.
  assert disagreement < 1e-3, disagreement


def test_stored_images_match_an_independent_projection(raw, prep, tiny):
  projection = prep.pca.components @ prep.pca.components.T  # Another product, so other rounding.
  disagreement = 0.0
  for split, examples in tiny.items():
    images = R.split_images(raw, split)[0][: TINY[split]]
    levels = (images.reshape(len(images), -1) - prep.pca.mean) @ projection + prep.pca.mean
    np.testing.assert_array_equal(
      np.clip(np.rint(levels), 0, 255).astype(np.uint8), examples["image"].reshape(len(images), -1)
    )
    disagreement += rounding_disagreement(levels, prep.pca.rebuild(images))
  assert disagreement < 1e-3, disagreement


def test_labels_come_from_mnist_and_images_are_degraded_copies(raw, prep, tiny):
  np.testing.assert_array_equal(tiny["validation"]["label"], raw.train_labels[R.NUM_TRAIN :][:160])
  np.testing.assert_array_equal(tiny["test"]["label"], raw.test_labels[:320])
  np.testing.assert_array_equal(
    tiny["validation"]["image"], prep.pca.degrade(raw.train_images[R.NUM_TRAIN :][:160])
  )
  assert not np.array_equal(tiny["test"]["image"][..., 0], raw.test_images[:320])


# ---- Image: PCA ----


def test_pca_keeps_the_fewest_components_explaining_a_quarter_of_the_variance(prep):
  cumulative = np.cumsum(prep.pca.explained)
  k = prep.pca.num_kept
  assert cumulative[k - 1] >= A.VARIANCE_KEPT > (cumulative[k - 2] if k > 1 else 0.0)
  assert 1 <= k <= 10 and np.isclose(cumulative[-1], 1.0)
  np.testing.assert_allclose(prep.pca.components.T @ prep.pca.components, np.eye(k), atol=1e-8)


def test_pca_removes_about_three_quarters_of_the_energy(raw, prep):
  images = raw.train_images[:2000]
  before = images.reshape(2000, -1) - prep.pca.mean
  after = prep.pca.degrade(images).reshape(2000, -1) - prep.pca.mean
  kept = (after**2).sum() / (before**2).sum()
  assert 0.2 < kept < 0.35, kept  # ~ cumulative[k - 1], give or take clipping and rounding.


def test_preprocessing_is_fitted_on_the_training_pool_only(raw, monkeypatch):
  seen = {}
  monkeypatch.setattr(A, "fit_image_pca", lambda images: seen.setdefault("images", images))
  monkeypatch.setattr(A, "fit_spectrogram_scale", lambda waves: seen.setdefault("waves", waves))
  A.fit_preprocessing(raw)
  assert seen["images"] is not None and len(seen["images"]) == R.NUM_TRAIN  # Not validation, not test.
  np.testing.assert_array_equal(seen["images"], raw.train_images[: R.NUM_TRAIN])
  train_takes = takes(raw.recordings) >= 10  # Not validation's takes 5-9, not test's 0-4.
  assert train_takes.sum() == 6 * 10 * 40  # Six speakers, ten digits, takes 10-49.
  np.testing.assert_array_equal(seen["waves"], raw.waves[train_takes])


@pytest.mark.parametrize("chunk", [7, 4096])
def test_pixel_covariance_is_exact_whatever_the_chunking(monkeypatch, chunk):
  monkeypatch.setattr(A, "_PCA_CHUNK", chunk)
  images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
  images[:50] = 255  # The largest products and sums.
  x = images.reshape(300, -1).astype(np.int64)
  total = x.sum(0)
  mean, covariance = A.pixel_covariance(images)
  np.testing.assert_array_equal(mean, total / 300)
  np.testing.assert_array_equal(covariance, (300 * (x.T @ x) - np.outer(total, total)) / 300**2)


def test_pca_depends_on_its_training_images():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (500, 28, 28), dtype=np.uint8)
  a, b = A.fit_image_pca(images), A.fit_image_pca(images.copy())
  np.testing.assert_array_equal(a.mean, b.mean)
  images[:100] = 0
  assert not np.allclose(A.fit_image_pca(images).mean, a.mean)


# ---- Audio ----


def test_spectrograms_span_the_uint8_range(tiny):
  audio = tiny["train"]["audio"]
  assert audio.shape == (640, 112, 112, 1) and audio.dtype == np.uint8
  low, high = np.percentile(audio, [1, 99.9])
  assert high - low > 120 and audio.max() >= 230
  assert audio.reshape(640, -1).std(1).min() > 5  # Every spectrogram has structure, none is flat.


def test_spectrogram_is_the_windowed_dft():
  rng = np.random.default_rng(0)
  waves = rng.standard_normal((2, S.NUM_SAMPLES)).astype(np.float32) * 0.1
  waves[1, 4000:] = 0  # Silence: clamped to the floor.
  got = S.log_power_spectrogram(waves)
  assert got.shape == (2, 112, 112) and got.dtype == np.float64
  np.testing.assert_allclose(got, dft_db(waves), rtol=0, atol=1e-6)  # One uint8 step is 0.31 dB.
  np.testing.assert_allclose(got[1, :, -50:], S.POWER_FLOOR_DB, rtol=0, atol=1e-9)


def test_split_recording_pools_are_disjoint_and_cover_every_recording(raw):
  assert len(raw.recordings) == 3000  # FSDD: 6 speakers x 10 digits x takes 0-49.
  owner = {}
  for split in R.SPLITS:
    pools = R.recording_pools(raw, split)
    for digit, pool in enumerate(pools):
      names = [raw.recordings[i] for i in pool]
      assert set(takes(names)) == SPLIT_TAKES[split], (split, digit)
      assert (digits(names) == digit).all()
      # Split by take within speaker: all six speakers in every split, each with all the split's takes.
      per_speaker = {}
      for name in names:
        _, speaker, take = R.parse_recording(name)
        per_speaker.setdefault(speaker, set()).add(take)
      assert len(per_speaker) == 6 and all(t == SPLIT_TAKES[split] for t in per_speaker.values())
      for i in pool:
        assert owner.setdefault(int(i), split) == split, (raw.recordings[i], owner[int(i)], split)
  assert sorted(owner) == list(range(len(raw.recordings)))  # Every recording in exactly one pool.
  assert [R.take_split(t) for t in (0, 4, 5, 9, 10, 49)] == ["test"] * 2 + ["validation"] * 2 + ["train"] * 2


def test_built_splits_hear_disjoint_recordings(built):
  sources, _ = built
  heard = {}
  for split, n in TINY.items():
    heard[split] = {sources[split][i]["recording"].decode() for i in range(n)}
    assert set(takes(heard[split])) <= SPLIT_TAKES[split], split
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not heard[a] & heard[b], (a, b, sorted(heard[a] & heard[b])[:5])


def test_every_split_hears_only_its_own_takes(raw):
  for split in R.SPLITS:
    _, labels = R.split_images(raw, split)
    assigned = R.pair_recordings(labels, R.recording_pools(raw, split), 0, split)
    names = [raw.recordings[i] for i in assigned]
    assert set(takes(names)) == SPLIT_TAKES[split]  # The full split hears every take of its pool.
    np.testing.assert_array_equal(digits(names), labels)  # Every image hears its own digit.
    # Every recording of the pool is used, each about equally often.
    for digit, pool in enumerate(R.recording_pools(raw, split)):
      counts = np.bincount(assigned[labels == digit], minlength=len(raw.recordings))[pool]
      assert counts.max() - counts.min() <= 1


def test_built_examples_hear_their_own_digit(tiny):
  for split, examples in tiny.items():
    np.testing.assert_array_equal(digits(examples["recording"]), examples["label"])
    assert set(takes(examples["recording"])) <= SPLIT_TAKES[split]


def test_noise_is_seeded_per_example_at_the_configured_snr(raw):
  waves, power = raw.waves[:3], S.signal_power(raw.waves[:3], raw.lengths[:3])
  rows = np.array([5, 6, 7])
  a = A.add_noise(waves, power, -6.0, 0, "train", rows)
  np.testing.assert_array_equal(a, A.add_noise(waves, power, -6.0, 0, "train", rows))
  assert not np.allclose(a, A.add_noise(waves, power, -6.0, 0, "train", rows + 1))
  assert not np.allclose(a, A.add_noise(waves, power, -6.0, 0, "test", rows))
  assert not np.allclose(a, A.add_noise(waves, power, -6.0, 1, "train", rows))
  noise_power = ((a - waves) ** 2).mean(-1)
  np.testing.assert_allclose(10 * np.log10(power / noise_power), -6.0, atol=0.3)


def test_a_reused_recording_gets_fresh_noise_and_clean_has_none(raw, prep, tiny, tiny_clean_test):
  noisy = tiny["test"]  # 320 examples from 30 recordings per digit: every recording is reused.
  clean = tiny_clean_test
  assert clean["recording"] == noisy["recording"]
  assert np.isinf(clean["snr_db"]).all() and (noisy["snr_db"] == np.float32(A.DEFAULT_SNR_DB)).all()
  first = {}
  reused = 0
  for i, name in enumerate(noisy["recording"]):
    if name in first:
      j = first[name]
      reused += 1
      np.testing.assert_array_equal(clean["audio"][i], clean["audio"][j])
      assert not np.array_equal(noisy["audio"][i], noisy["audio"][j])
    first.setdefault(name, i)
  assert reused > 0
  r = raw.recordings.index(clean["recording"][0])
  expected = prep.scale.quantise(S.log_power_spectrogram(raw.waves[r : r + 1]))[0]
  np.testing.assert_array_equal(clean["audio"][0], expected)
  assert not np.array_equal(noisy["audio"][0], expected)


# ---- Raw files: where they come from, and errors that name them ----


def test_manual_dir_argument_beats_the_environment(monkeypatch):
  monkeypatch.setenv(R.MANUAL_DIR_ENV, "/from/env")
  assert A.resolve_manual_dir("/from/arg") == "/from/arg"
  assert A.resolve_manual_dir(None) == "/from/env"
  monkeypatch.delenv(R.MANUAL_DIR_ENV)
  assert A.resolve_manual_dir(None) is None


def copy_of_raw(tmp_path, skip: str | None = None) -> str:
  """A raw directory of symlinks to the real files, without `skip`."""
  os.makedirs(tmp_path / "mnist")
  for name in R.MNIST_FILES.values():
    if name != skip:
      os.symlink(os.path.join(os.path.abspath(RAW_DIR), "mnist", name), tmp_path / "mnist" / name)
  os.makedirs(tmp_path / "fsdd")
  os.symlink(os.path.join(os.path.abspath(RAW_DIR), "fsdd", "recordings"), tmp_path / "fsdd" / "recordings")
  return str(tmp_path)


def test_missing_raw_file_is_named(tmp_path):
  raw_dir = copy_of_raw(tmp_path / "raw", skip="t10k-labels-idx1-ubyte.gz")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
    data.load_sources("avmnist", config="tiny", data_dir=str(tmp_path / "tfds"), manual_dir=raw_dir)


@pytest.mark.parametrize(
  "content",
  [
    b"not gzip at all",
    gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20, mtime=0),
    gzip.compress(b"\x01\x02", mtime=0),
  ],
  ids=[
    "not gzip",
    "short data",
    "bad magic",
  ],  # Stable ids: pytest-xdist workers must collect the same tests.
)
def test_corrupt_idx_file_is_named(tmp_path, content):
  raw_dir = copy_of_raw(tmp_path, skip="train-images-idx3-ubyte.gz")
  (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(content)
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not a valid idx file"):
    R.read_raw(*R.manual_paths(raw_dir))


def test_bad_wav_and_missing_recordings_are_named(tmp_path):
  mnist, _ = R.manual_paths(RAW_DIR)
  recordings = tmp_path / "recordings"
  with pytest.raises(FileNotFoundError, match="recordings"):
    R.read_raw(mnist, str(recordings))
  os.makedirs(recordings)
  shutil.copy(os.path.join(RAW_DIR, "fsdd", "recordings", "0_george_5.wav"), recordings)
  (recordings / "3_theo_7.wav").write_bytes(b"RIFF....WAVEjunk")
  with pytest.raises(DataError, match="3_theo_7.wav: not a valid wav file"):
    R.read_raw(mnist, str(recordings))
  os.remove(recordings / "3_theo_7.wav")
  with pytest.raises(DataError, match=re.escape(f"{recordings}: no train recordings (takes other than")):
    R.read_raw(mnist, str(recordings))
  # Train and test recordings of every digit, a validation recording of digit 0 only.
  os.remove(recordings / "0_george_5.wav")
  for name in ("0_george_12.wav", "0_george_2.wav", "0_george_7.wav"):
    shutil.copy(os.path.join(RAW_DIR, "fsdd", "recordings", name), recordings)
  for digit in range(1, 10):
    for take in (2, 12):
      shutil.copy(os.path.join(RAW_DIR, "fsdd", "recordings", f"{digit}_george_{take}.wav"), recordings)
  message = f"{recordings}: no validation recordings (takes 5-9) of digit(s) {list(range(1, 10))}"
  with pytest.raises(DataError, match=re.escape(message)):
    R.read_raw(mnist, str(recordings))


@pytest.mark.parametrize("cut", [100, 101])  # An even and an odd number of bytes.
def test_truncated_wav_is_named(tmp_path, cut):
  source = os.path.join(RAW_DIR, "fsdd", "recordings", "0_george_5.wav")
  with wave.open(source, "rb") as w:
    frames = w.getnframes()
  with open(source, "rb") as f:
    content = f.read()
  assert len(content) > 2 * frames > cut  # A header, then the samples.
  path = tmp_path / "0_george_5.wav"
  path.write_bytes(content[:-cut])
  message = f"{path}: truncated wav file (header says {frames} frames, found {(2 * frames - cut) // 2})"
  with pytest.raises(DataError, match=re.escape(message)):
    S.read_wav(str(path))


def test_bad_split_names_and_sizes_are_data_errors(raw, prep):
  with pytest.raises(DataError, match="unknown avmnist split 'dev'"):
    A.generate_split(raw, prep, "dev")
  for size in (0, 10_001):
    with pytest.raises(DataError, match=f"avmnist test has 10000 examples, asked for {size}"):
      A.generate_split(raw, prep, "test", num_examples=size)


# ---- The noise level as a dataset option ----


def test_snr_option_prepares_that_level_beside_the_named_config(built, tmp_path):
  sources, _ = data.load_sources(
    "avmnist", config="tiny", data_dir=str(tmp_path), manual_dir=RAW_DIR, options={"snr_db": -4}
  )
  assert (tmp_path / "avmnist" / "tiny_snr_m4").is_dir()
  example, default = sources["validation"][3], built[0]["validation"][3]
  assert example["snr_db"] == -4.0 and default["snr_db"] == A.DEFAULT_SNR_DB
  assert example["recording"] == default["recording"] and example["label"] == default["label"]
  np.testing.assert_array_equal(example["image"], default["image"])
  assert not np.array_equal(example["audio"], default["audio"])


def test_snr_option_resolves_to_the_named_config_or_fails_in_one_line():
  make = functools.partial(A.Avmnist.make_config, manual_dir=None, data_dir="unused")
  assert make("noisy", {"snr_db": None}) == "noisy"
  assert make("noisy", {"snr_db": A.DEFAULT_SNR_DB}) == "noisy"
  assert make(None, {}) is None
  config = make("clean", {"snr_db": -7.5})
  assert (config.name, config.snr_db, config.train_size) == ("clean_snr_m7p5", -7.5, None)
  with pytest.raises(ConfigError, match="only dataset.options.snr_db; got snr"):
    make("noisy", {"snr": -9})
  with pytest.raises(ConfigError, match="must be a number of dB, got 'loud'"):
    make("noisy", {"snr_db": "loud"})
  with pytest.raises(ConfigError, match="no config 'quiet'"):
    make("quiet", {"snr_db": -9})
