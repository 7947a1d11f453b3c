"""The log-power spectrogram of 1 s of 8 kHz audio: AV-MNIST's audio modality, and any dataset's audio.

A recording is read as 16-bit PCM (`read_wav`), fitted to a 1 s window (`fit_to_window`), turned into
a 112 x 112 log-power spectrogram in dB (`log_power_spectrogram`: frequency x time, bin 0 = 0 Hz in row 0)
and quantised to uint8 on a scale fitted to the clean training recordings (`SpectrogramScale`).

Everything that ends in a rounding to uint8 is computed in float64, so that last-bit differences between
FFT or BLAS kernels (CPUs differ) stay far from the rounding boundaries (`mmlearn.data.avmnist`).
"""

import dataclasses
import io
import wave

import numpy as np

from mmlearn.errors import DataError

SAMPLE_RATE = 8000
NUM_SAMPLES = SAMPLE_RATE  # 1 s: FSDD recordings are 0.14-2.28 s, 99.3% at most 1 s.
# 222-sample (27.75 ms) periodic Hann frames every 70 samples (8.75 ms), no padding: rfft gives 112 bins
# (0-4 kHz, 36 Hz apart) and (8000 - 222) // 70 + 1 = 112 frames, covering samples 0-7991.
N_FFT = 222
HOP = 70
SPEC_SIZE = N_FFT // 2 + 1
assert (NUM_SAMPLES - N_FFT) // HOP + 1 == SPEC_SIZE == 112
WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # float64
POWER_FLOOR_DB = -100.0  # log10 of zero power (silence padding) is clamped here.
# The uint8 scale maps [top - DYNAMIC_RANGE_DB, top] dB to [0, 255], `top` being the SCALE_PERCENTILE-th
# percentile of the clean training recordings' log-power (a max that one clipped recording cannot move).
SCALE_PERCENTILE = 99.9
DYNAMIC_RANGE_DB = 80.0

_CHUNK = 1024  # Examples processed at once: bounds the float64 temporaries to ~450 MB.


def read_wav(path: str) -> np.ndarray:
  """An 8 kHz mono 16-bit PCM wav file as float32 in [-1, 1) (`read_wav_bytes`); errors name the file."""
  with open(path, "rb") as f:
    return read_wav_bytes(f.read(), path)


def read_wav_bytes(data: bytes, where: str) -> np.ndarray:
  """An 8 kHz mono 16-bit PCM wav's bytes as float32 in [-1, 1); anything else is an error naming `where`.

  `wave` silently returns fewer frames than the header promises when the file is cut short, so a
  truncated download would otherwise become a shorter recording. Datasets that store recordings encoded
  (`mmlearn.data.captioned`) decode them here too, so stored bytes pass the same checks as files.
  """
  try:
    with wave.open(io.BytesIO(data), "rb") as w:
      params = (w.getframerate(), w.getnchannels(), w.getsampwidth())
      num_frames = w.getnframes()
      frames = w.readframes(num_frames)
  except (wave.Error, EOFError) as e:
    raise DataError(f"{where}: not a valid wav file ({e})") from None
  if params != (SAMPLE_RATE, 1, 2):
    raise DataError(
      f"{where}: expected {SAMPLE_RATE} Hz mono 16-bit PCM, got (rate, channels, bytes) {params}"
    )
  if len(frames) != 2 * num_frames:
    raise DataError(
      f"{where}: truncated wav file (header says {num_frames} frames, found {len(frames) // 2})"
    )
  return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0


def fit_to_window(samples: np.ndarray) -> tuple[np.ndarray, int]:
  """The first `NUM_SAMPLES` samples, zero-padded at the end; and how many of them are the recording's."""
  out = np.zeros(NUM_SAMPLES, np.float32)
  length = min(len(samples), NUM_SAMPLES)
  out[:length] = samples[:length]
  return out, length


def log_power_spectrogram(waves: np.ndarray) -> np.ndarray:
  """[B, NUM_SAMPLES] -> log-power in dB, float64 [B, 112 freq bins, 112 frames].

  float64 throughout, so that rounding differences between FFT or BLAS kernels (see the module docstring)
  stay far from the uint8 rounding boundaries. pocketfft transforms every frame alone, so a frame's
  result does not depend on the batch; it is as fast as a float64 DFT matrix product on two cores.
  """
  frames = np.lib.stride_tricks.sliding_window_view(np.asarray(waves, np.float64), N_FFT, axis=-1)[:, ::HOP]
  spectrum = np.fft.rfft(frames * WINDOW, axis=-1)  # [B, 112 frames, 112 bins]
  power = np.square(spectrum.real)
  power += np.square(spectrum.imag)
  del spectrum
  db = np.log10(np.maximum(power, 10.0 ** (POWER_FLOOR_DB / 10.0), out=power), out=power)
  db *= 10.0
  return db.transpose(0, 2, 1)


@dataclasses.dataclass
class SpectrogramScale:
  """Maps dB to uint8 linearly: `low` -> 0, `high` -> 255, clipped outside."""

  low: float
  high: float

  def levels(self, db: np.ndarray) -> np.ndarray:
    """float64 levels before rounding: `low` -> 0.0, `high` -> 255.0."""
    levels = np.asarray(db, np.float64) - self.low
    levels *= 255.0 / (self.high - self.low)
    return levels

  def quantise(self, db: np.ndarray) -> np.ndarray:
    levels = self.levels(db)
    return np.clip(np.rint(levels, out=levels), 0, 255, out=levels).astype(np.uint8)[..., None]


def fit_spectrogram_scale(train_waves: np.ndarray) -> SpectrogramScale:
  """The scale from clean training recordings (pass train takes only), shared by clean and noisy configs."""
  db = np.empty((len(train_waves), SPEC_SIZE, SPEC_SIZE))
  for start in range(0, len(train_waves), _CHUNK):
    db[start : start + _CHUNK] = log_power_spectrogram(train_waves[start : start + _CHUNK])
  high = float(np.percentile(db, SCALE_PERCENTILE, overwrite_input=True))  # No second 270 MB copy.
  return SpectrogramScale(low=high - DYNAMIC_RANGE_DB, high=high)


def signal_power(waves: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Mean square over each recording's own samples, so SNR does not depend on the silence padding."""
  waves = np.asarray(waves, np.float64)
  return (waves * waves).sum(-1) / np.maximum(lengths, 1)
