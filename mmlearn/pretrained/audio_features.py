"""Kaldi-style log-mel filter-bank features in numpy: the input of an Audio Spectrogram Transformer tower.

`FilterBank` computes what transformers' `ASTFeatureExtractor` computes on its numpy path (the one it
takes without torchaudio), from the same `preprocessor_config.json`, without torch:

  1. the waveform is rounded to float32 (the extractor does so to float64 input), then computed in float64;
  2. 25 ms frames every 10 ms at 16 kHz (400 samples every 160, no centring: frame t starts at 160 t),
     `1 + (samples - 400) // 160` of them; these constants do not follow the sampling rate, as in the
     extractor;
  3. per frame: remove the DC offset (subtract the frame's mean), pre-emphasis 0.97 (x[n] - 0.97 x[n-1],
     the first sample scaled by 1 - 0.97), a symmetric 400-sample Hann window (`np.hanning`, the
     extractor's `window_function(400, "hann", periodic=False)`), zero-padded to a 512-point FFT;
  4. the spectrum is rounded to complex64 (the extractor stores it so), and its power |X|^2 (float64) is
     projected on `num_mel_bins` triangular filters, laid out on Kaldi's mel scale (1127 ln(1 + f / 700))
     between 20 Hz and half the sampling rate and triangular *in mel*, over the 257 FFT bins;
  5. floored at 2^-23 (float32's epsilon), natural log, rounded to float32;
  6. padded with zero frames (after the log, before normalising) or truncated to `max_length` frames;
  7. with `do_normalize`, (x - mean) / (2 std), in float32 as the extractor.

Precision: steps 1-5 are float64 with the same roundings to complex64 and float32 as the reference, so
the two agree to float32 rounding: only the order of float64 sums may differ (the tests allow 1e-4
absolute after normalisation; on the fixtures the features are bitwise equal). float64 also keeps the
log of small powers accurate, where a float32 FFT would lose the quiet frames to cancellation.

Output: [max_length frames, num_mel_bins] float32, the layout `ASTModel` and the `ast` tower read
(time first). A waveform of another sampling rate is refused, not resampled.
"""

import dataclasses
import functools
import os

import numpy as np

from mmlearn.errors import CheckpointError, DataError
from mmlearn.pretrained import checkpoint

PREPROCESSOR_CONFIG = "preprocessor_config.json"
FEATURE_EXTRACTOR_TYPE = "ASTFeatureExtractor"
FRAME_LENGTH = 400  # samples per frame (25 ms at 16 kHz)
HOP_LENGTH = 160  # samples between frame starts (10 ms at 16 kHz)
FFT_LENGTH = 512
NUM_FREQUENCY_BINS = FFT_LENGTH // 2 + 1  # 257
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07  # float32 epsilon, 2^-23
MIN_FREQUENCY = 20.0  # Hz, the lowest filter's lower edge


def kaldi_mel(hertz: np.ndarray | float) -> np.ndarray:
  """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
  return 1127.0 * np.log(1.0 + np.asarray(hertz, np.float64) / 700.0)


def mel_filter_bank(num_mel_bins: int, sampling_rate: int) -> np.ndarray:
  """[257 FFT bins, num_mel_bins] float64: triangles in mel space over [20 Hz, sampling_rate // 2].

  Filter m rises linearly in mel from edge m to centre m + 1 and falls to edge m + 2, the `num_mel_bins
  + 2` edges being equally spaced in mel; each FFT bin is placed at its frequency's mel value. No area
  normalisation (Kaldi's, and the extractor's `norm=None`).
  """
  edges = np.linspace(kaldi_mel(MIN_FREQUENCY), kaldi_mel(sampling_rate // 2), num_mel_bins + 2)
  bins = kaldi_mel(sampling_rate / FFT_LENGTH * np.arange(NUM_FREQUENCY_BINS))[:, None]
  width = np.diff(edges)
  rising = (bins - edges[:-2]) / width[:-1]
  falling = (edges[2:] - bins) / width[1:]
  return np.maximum(0.0, np.minimum(rising, falling))


@functools.lru_cache(maxsize=8)
def _filters(num_mel_bins: int, sampling_rate: int) -> np.ndarray:
  filters = mel_filter_bank(num_mel_bins, sampling_rate)
  filters.setflags(write=False)
  return filters


_WINDOW = np.hanning(FRAME_LENGTH)  # float64, symmetric
_WINDOW.setflags(write=False)


def log_mel_frames(waveform: np.ndarray, filters: np.ndarray) -> np.ndarray:
  """[samples] -> [frames, mel bins] float32 log-mel energies, unpadded (the module docstring's steps 1-5)."""
  wave = np.asarray(waveform).astype(np.float32).astype(np.float64)
  num_frames = 1 + (wave.size - FRAME_LENGTH) // HOP_LENGTH
  starts = HOP_LENGTH * np.arange(num_frames)
  frames = wave[starts[:, None] + np.arange(FRAME_LENGTH)]
  frames = frames - frames.mean(axis=1, keepdims=True)
  emphasised = np.empty_like(frames)
  emphasised[:, 1:] = frames[:, 1:] - PREEMPHASIS * frames[:, :-1]
  emphasised[:, 0] = frames[:, 0] * (1 - PREEMPHASIS)
  spectrum = np.fft.rfft(emphasised * _WINDOW, n=FFT_LENGTH, axis=1).astype(np.complex64)
  power = np.abs(spectrum, dtype=np.float64) ** 2
  mel = np.maximum(MEL_FLOOR, power @ filters)
  return np.log(mel).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FilterBank:
  """The feature extractor of one AST checkpoint: a waveform -> [max_length, num_mel_bins] float32.

  Attributes:
    sampling_rate: the only rate accepted, in Hz.
    num_mel_bins: mel filters (the features' width).
    max_length: frames out, after zero-padding or truncation.
    do_normalize: apply (x - mean) / (2 std).
    mean, std: the normalisation (AudioSet's by default in the extractor; the checkpoint's here).
  """

  sampling_rate: int
  num_mel_bins: int
  max_length: int
  do_normalize: bool = True
  mean: float = -4.2677393
  std: float = 4.5689974

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike) -> "FilterBank":
    """The extractor a checkpoint's `preprocessor_config.json` describes; a `CheckpointError` otherwise."""
    config = checkpoint.read_json(directory, PREPROCESSOR_CONFIG)
    where = os.path.join(directory, PREPROCESSOR_CONFIG)
    kind = config.get("feature_extractor_type")
    if kind != FEATURE_EXTRACTOR_TYPE:
      raise CheckpointError(f"{where} describes a {kind!r} feature extractor, not {FEATURE_EXTRACTOR_TYPE!r}")
    # The extractor's defaults for keys its config may leave out.
    values = {"sampling_rate": 16000, "num_mel_bins": 128, "max_length": 1024}
    values |= {key: config[key] for key in ("sampling_rate", "num_mel_bins", "max_length") if key in config}
    for key, value in values.items():
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{where}: {key} must be a positive integer, got {value!r}")
    do_normalize = config.get("do_normalize", True)
    mean, std = config.get("mean", cls.mean), config.get("std", cls.std)
    for key, value in (("mean", mean), ("std", std)):
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        raise CheckpointError(f"{where}: {key} must be a finite number, got {value!r}")
    if do_normalize and std == 0:
      raise CheckpointError(f"{where}: std is 0, so the features cannot be normalised")
    return cls(do_normalize=bool(do_normalize), mean=float(mean), std=float(std), **values)

  @property
  def filters(self) -> np.ndarray:
    """The [257, num_mel_bins] float64 mel filter bank (read-only, shared)."""
    return _filters(self.num_mel_bins, self.sampling_rate)

  def __call__(self, waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """A mono float waveform at `sampling_rate` Hz -> [max_length, num_mel_bins] float32 features."""
    if sampling_rate != self.sampling_rate:
      raise DataError(
        f"waveform sampled at {sampling_rate} Hz, but this feature extractor (and its model) reads "
        f"{self.sampling_rate} Hz; resample it first"
      )
    waveform = np.asarray(waveform)
    if waveform.ndim != 1 or not np.issubdtype(waveform.dtype, np.floating):
      raise DataError(
        f"expected a mono float waveform [samples], got {waveform.dtype} of shape {waveform.shape}"
      )
    if waveform.size < FRAME_LENGTH:
      raise DataError(
        f"waveform of {waveform.size} samples is shorter than one {FRAME_LENGTH}-sample frame "
        f"({1000 * FRAME_LENGTH / self.sampling_rate:g} ms)"
      )
    frames = log_mel_frames(waveform, self.filters)[: self.max_length]
    features = np.zeros((self.max_length, self.num_mel_bins), np.float32)
    features[: len(frames)] = frames
    if self.do_normalize:
      features = (features - np.float32(self.mean)) / np.float32(self.std * 2)
    return features
