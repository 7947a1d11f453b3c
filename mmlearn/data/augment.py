"""Training-time augmentation of whole batches, in numpy, after the pipeline has scaled arrays to [-1, 1].

The pipeline builds a batch at a time on the CPU that also runs the train step, so every augmentation is
vectorised over the batch (one gather or one `np.where` per feature); none needs scipy. Randomness comes
only from the generator the pipeline passes in, seeded by (seed, process, batch number), so a restored
iterator reproduces the augmented stream exactly. Evaluation batches are never augmented.

* `image_crop_pad` k: pad by k pixels by reflection (numpy's "reflect": the edge pixel is not repeated),
  then crop back at a random offset in [-k, k]^2. Reflection rather than zeros, because zero is black
  (-1), which is not the background of every dataset (mmshapes' is dark gray and noisy): a black border
  would be a new artefact the model could learn. Needs k < the image size.
* `image_rotate_degrees` d: rotate about the centre by an angle uniform in [-d, d], bilinear, sampling
  outside the image by the same reflection.
* `image_hflip`: mirror left-right with probability 1/2. Wrong for digits (a mirrored 2, 3, 7 is not a
  digit) and for mmshapes captions that say "left" or "right"; it is for datasets without handedness.
* `audio_freq_mask` / `audio_time_mask` F: SpecAugment, one mask per example on each axis of the
  [freq, time, 1] spectrogram, of width uniform in [0, F] bins at a uniform position, filled with -1:
  uint8 0, the bottom of the spectrogram's dB scale (80 dB below its top), i.e. silence.
* `text_token_dropout` p: drop each real token with probability p; the remaining tokens move left so the
  sequence stays a prefix followed by padding, and the mask marks them, as the pipeline promises. The
  vocabularies here are closed and have no unknown-word id to replace a token by (see `text.py`). A
  caption that would lose every token is left whole.
"""

import dataclasses
from typing import Any, ClassVar

import numpy as np

from mmlearn.data.text import PAD_ID
from mmlearn.errors import ConfigError

FILL = -1.0  # Scaled value of uint8 0: black image pixel, silent spectrogram bin.


@dataclasses.dataclass(frozen=True)
class Augment:
  """Which augmentations run, and how strongly; the defaults (all off) leave batches untouched.

  A `pipeline.BatchTransform`: the pipeline calls it on each training batch with a seeded generator.
  """

  stream: ClassVar[int] = 0xA06
  image_crop_pad: int = 0
  image_rotate_degrees: float = 0.0
  image_hflip: bool = False
  audio_time_mask: int = 0
  audio_freq_mask: int = 0
  text_token_dropout: float = 0.0

  def __post_init__(self):
    for name in ("image_crop_pad", "audio_time_mask", "audio_freq_mask"):
      if getattr(self, name) < 0:
        raise ConfigError(f"augment.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
    if not 0 <= self.image_rotate_degrees <= 180:
      raise ConfigError(f"augment.image_rotate_degrees must be in [0, 180], got {self.image_rotate_degrees}")
    if not 0 <= self.text_token_dropout < 1:
      raise ConfigError(f"augment.text_token_dropout must be in [0, 1), got {self.text_token_dropout}")

  @classmethod
  def from_config(cls, config: Any) -> "Augment":
    """From `config.augment` (a ConfigDict or dict with this class's fields)."""
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

  @property
  def active(self) -> bool:
    return self != Augment()

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The augmented batch (a new dict; the label and any other feature are passed through)."""
    batch = dict(batch)
    if "image" in batch:
      if self.image_crop_pad:
        batch["image"] = random_crop(batch["image"], self.image_crop_pad, rng)
      if self.image_rotate_degrees:
        batch["image"] = random_rotate(batch["image"], self.image_rotate_degrees, rng)
      if self.image_hflip:
        batch["image"] = random_hflip(batch["image"], rng)
    if "audio" in batch:
      if self.audio_freq_mask:
        batch["audio"] = random_mask(batch["audio"], self.audio_freq_mask, axis=1, rng=rng)
      if self.audio_time_mask:
        batch["audio"] = random_mask(batch["audio"], self.audio_time_mask, axis=2, rng=rng)
    if "text" in batch and self.text_token_dropout:
      batch["text"], batch["text_mask"] = token_dropout(
        batch["text"], batch["text_mask"], self.text_token_dropout, rng
      )
    return batch


def reflect(index: np.ndarray, size: int) -> np.ndarray:
  """Integer positions folded into [0, size) by mirror reflection about the edge pixels (numpy "reflect").

  Exact within one reflection, [-(size - 1), 2 * (size - 1)], which covers crops (pad < size) and
  rotations of square images; anything further out is clamped to the edge. Two `abs` instead of a
  `mod`: the mod was most of a rotation's cost.
  """
  last = size - 1
  return np.clip(last - np.abs(last - np.abs(index)), 0, last)


def _gather(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """`images[b, rows[..., b, i, j], cols[..., b, i, j]]`: integer [..., B, H, W] -> [..., B, H, W, C].

  One `np.take` of flat pixel indices, each pixel's channels viewed as one opaque item: several times
  faster than numpy's three-array fancy indexing.
  """
  b, h, w, c = images.shape
  flat = (np.arange(b, dtype=np.int32)[:, None, None] * h + rows) * w + cols
  pixels = np.ascontiguousarray(images).reshape(b * h * w, c)
  items = pixels.view(np.dtype((np.void, pixels.itemsize * c))).reshape(-1)
  return np.take(items, flat).view(images.dtype).reshape(*flat.shape, c)


def random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """[B, H, W, C]: a random crop of each image reflect-padded by `pad` pixels, back to H x W."""
  b, h, w = images.shape[:3]
  if pad >= min(h, w):
    raise ConfigError(f"augment.image_crop_pad {pad} must be smaller than the image ({h}x{w})")
  dy, dx = rng.integers(-pad, pad + 1, size=(2, b))
  rows = reflect(np.arange(h) + dy[:, None], h)[:, :, None]
  cols = reflect(np.arange(w) + dx[:, None], w)[:, None, :]
  return _gather(images, rows, cols)


def random_rotate(images: np.ndarray, max_degrees: float, rng: np.random.Generator) -> np.ndarray:
  """[B, H, W, C]: each image rotated about its centre by a uniform angle in [-max, max] degrees, bilinear.

  Inverse mapping: every output pixel reads the rotated-back position of the input, interpolating its
  four neighbours (positions outside fold back in by reflection). Angle 0 returns the image exactly.
  """
  b, h, w = images.shape[:3]
  angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=b)).astype(np.float32)[:, None, None]
  cos, sin = np.cos(angle), np.sin(angle)
  y = np.arange(h, dtype=np.float32)[None, :, None] - np.float32((h - 1) / 2)
  x = np.arange(w, dtype=np.float32)[None, None, :] - np.float32((w - 1) / 2)
  src_y = cos * y - sin * x + np.float32((h - 1) / 2)
  src_x = sin * y + cos * x + np.float32((w - 1) / 2)
  y0, x0 = np.floor(src_y), np.floor(src_x)
  wy, wx = (src_y - y0).astype(images.dtype)[..., None], (src_x - x0).astype(images.dtype)[..., None]
  y0, x0 = y0.astype(np.int32), x0.astype(np.int32)
  rows = np.stack([reflect(y0, h), reflect(y0 + 1, h)])[:, None]  # [2 (y), 1, B, H, W]
  cols = np.stack([reflect(x0, w), reflect(x0 + 1, w)])[None, :]  # [1, 2 (x), B, H, W]
  (tl, tr), (bl, br) = _gather(images, rows, cols)  # The four neighbours, in one gather.
  return (tl + (tr - tl) * wx) * (1 - wy) + (bl + (br - bl) * wx) * wy


def random_hflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[B, H, W, C]: each image mirrored left-right with probability 1/2."""
  flip = rng.random(len(images)) < 0.5
  out = images.copy()
  out[flip] = images[flip, :, ::-1]
  return out


def random_mask(arrays: np.ndarray, max_width: int, *, axis: int, rng: np.random.Generator) -> np.ndarray:
  """One band per example along `axis` (1: frequency, 2: time), width uniform in [0, max_width], set to -1."""
  b, size = len(arrays), arrays.shape[axis]
  width = rng.integers(0, min(max_width, size) + 1, size=b)
  start = (rng.random(b) * (size - width + 1)).astype(np.int64)
  position = np.arange(size)
  band = (position >= start[:, None]) & (position < (start + width)[:, None])  # [B, size]
  shape = [b] + [1] * (arrays.ndim - 1)
  shape[axis] = size
  return np.where(band.reshape(shape), np.asarray(FILL, arrays.dtype), arrays)


def token_dropout(
  tokens: np.ndarray, mask: np.ndarray, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """[B, T] tokens and mask with each real token dropped with probability `p`, the rest shifted left."""
  keep = mask & (rng.random(tokens.shape) >= p)
  keep |= mask & ~keep.any(axis=1, keepdims=True)  # Never empty a caption: keep it whole instead.
  order = np.argsort(~keep, axis=1, kind="stable")  # Kept tokens first, in their order.
  kept = np.take_along_axis(keep, order, axis=1)
  return np.where(kept, np.take_along_axis(tokens, order, axis=1), PAD_ID).astype(tokens.dtype), kept
