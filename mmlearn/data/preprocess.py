"""What the input pipeline does to one stored example: decode its media, size its image, tokenize its text.

Datasets of real size store media encoded (an image's JPEG or PNG bytes, a recording's wav bytes) and
captions as text, so one prepared dataset serves any image size, crop and tokenizer. `ExampleView` wraps
a split's records and returns model-ready examples, the same shapes and dtypes as a dataset that stores
arrays and token ids; it runs wherever the pipeline reads examples (its worker processes, see
`mmlearn.data.pipeline`), so it holds only picklable settings.

* media: a feature the builder stores encoded has a decoder (`LocalBuilder.decoders`: bytes -> uint8
  array); features stored as arrays pass unchanged;
* images: with `image_size` > 0 the shorter side is resized to `image_size` and the centre cropped (as
  CLIP's evaluation preprocessing; a square image is simply resized); a training batch may take
  Inception's random-resized crop instead (`example(i, rng)`): 8-100% of the area at an aspect ratio in
  [3/4, 4/3], resized to `image_size` square. With `image_crop` False the whole image is resized to
  `image_size` square instead (SigLIP's processor). Resizing is on uint8, with `image_resample`
  ("bilinear", or "bicubic" as CLIP's and SigLIP's processors);
* text: with a tokenizer, the caption becomes `tokens` (ids); without one, stored `tokens` are kept.

Normalisation (`image_mean`, `image_std` per channel) is applied to whole batches (`normalise_batch`).
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from mmlearn.data.media import resize
from mmlearn.errors import DataError

ARRAY_FEATURES = ("image", "audio")  # uint8 arrays, scaled to floats by batch.
# The random-resized crop's area and aspect-ratio ranges (Inception; torchvision's defaults).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
DEFAULT_MEAN = DEFAULT_STD = (0.5,)  # uint8 -> [-1, 1], what every model here trains on by default.


class Tokenizer(Protocol):
  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str) -> np.ndarray: ...


class Records(Protocol):
  def __len__(self) -> int: ...

  def __getitem__(self, index: int, /) -> Mapping[str, Any]: ...


def center_crop(image: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
  """The shorter side resized to `size`, then the central `size` x `size` square."""
  h, w = image.shape[:2]
  scale = size / min(h, w)
  height, width = max(size, round(h * scale)), max(size, round(w * scale))
  image = resize(image, height, width, resample)
  top, left = (height - size) // 2, (width - size) // 2
  return image[top : top + size, left : left + size]


def random_resized_crop(
  image: np.ndarray, size: int, rng: np.random.Generator, resample: str = "bilinear"
) -> np.ndarray:
  """A random area and aspect ratio of `image` (`CROP_SCALE`, `CROP_RATIO`), resized to `size` x `size`.

  Ten tries at a crop that fits, then the centre crop, as torchvision's `RandomResizedCrop`.
  """
  h, w = image.shape[:2]
  log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
  for _ in range(10):
    target = h * w * rng.uniform(*CROP_SCALE)
    ratio = math.exp(rng.uniform(*log_ratio))
    crop_w, crop_h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < crop_w <= w and 0 < crop_h <= h:
      top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
      return resize(image[top : top + crop_h, left : left + crop_w], size, size, resample)
  return center_crop(image, size, resample)


def caption_text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class ExampleView:
  """A split's records as model-ready examples (see the module docstring); `len` and `[i]` as a source.

  `records` is the split (a TFDS data source); `decoders` decode features stored encoded; `tokenizer`
  (None: keep stored `tokens`) encodes `caption`; `image_size` 0 keeps the stored size.
  """

  records: Records
  decoders: Mapping[str, Callable[[Any], np.ndarray]] = dataclasses.field(default_factory=dict)
  tokenizer: Tokenizer | None = None
  image_size: int = 0
  image_mean: tuple[float, ...] = DEFAULT_MEAN
  image_std: tuple[float, ...] = DEFAULT_STD
  image_resample: str = "bilinear"
  image_crop: bool = True

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.example(index)

  def example(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Example `index`; with `rng`, its image is a random-resized crop (training) instead of the centre."""
    stored = self.records[index]
    example = {k: v for k, v in stored.items() if k not in ARRAY_FEATURES}
    for name in ARRAY_FEATURES:
      if name in stored:
        array = self.decoders[name](stored[name]) if name in self.decoders else np.asarray(stored[name])
        if name == "image" and self.image_size:
          if rng is not None:
            array = random_resized_crop(array, self.image_size, rng, self.image_resample)
          elif self.image_crop:
            array = center_crop(array, self.image_size, self.image_resample)
          else:
            array = resize(array, self.image_size, self.image_size, self.image_resample)
        example[name] = array
    if self.tokenizer is not None and "caption" in stored:
      example["tokens"] = self.tokenizer.encode(caption_text(stored["caption"]))
    return example

  @property
  def random_crops(self) -> bool:
    """Whether `example(i, rng)` can crop at random (it needs an `image_size` to crop to)."""
    return self.image_size > 0


def normalise_batch(
  batch: dict[str, np.ndarray],
  mean: tuple[float, ...] = DEFAULT_MEAN,
  std: tuple[float, ...] = DEFAULT_STD,
  empty: Callable[[tuple[int, ...], type], np.ndarray] = np.empty,
) -> dict[str, np.ndarray]:
  """uint8 arrays -> float32 `(x / 255 - mean) / std` per image channel, once per batch.

  Computed as `x * (1 / (255 std)) - mean / std` in float32: with the defaults (0.5, 0.5) that is exactly
  the pipeline's historical `x * (2 / 255) - 1`, the [-1, 1] scale every model here was trained on.
  A uint8 has 256 values, so each channel's 256 results are computed once and looked up (one pass over
  the batch, where the arithmetic takes three: it is the pipeline's largest cost per 224 px image).
  Per-tower statistics are an image convention: other arrays (spectrograms) keep [-1, 1]. A grey image
  normalised with three channels' statistics becomes RGB (its channel repeated), as the pretrained
  towers' processors convert it. `empty` allocates the outputs (the pipeline's workers write them
  straight into shared memory).
  """
  batch = dict(batch)
  for name in ARRAY_FEATURES:
    if name in batch and batch[name].dtype == np.uint8:
      if name == "image":
        if batch[name].shape[-1] == 1 and 3 in (len(mean), len(std)):
          batch[name] = np.repeat(batch[name], 3, axis=-1)
        channels = batch[name].shape[-1]
        scale = np.float32(1.0) / (np.float32(255.0) * _per_channel(std, channels, "std"))
        offset = _per_channel(mean, channels, "mean") / _per_channel(std, channels, "std")
      else:
        scale, offset = np.full(1, 2.0 / 255.0, np.float32), np.ones(1, np.float32)
      table = np.arange(256, dtype=np.float32)[None, :] * scale[:, None] - offset[:, None]  # [C or 1, 256]
      values = batch[name]
      out = empty(values.shape, np.float32)
      for channel in range(values.shape[-1]):
        out[..., channel] = table[min(channel, len(table) - 1)][values[..., channel]]
      batch[name] = out
  return batch


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> np.ndarray:
  if len(values) not in (1, channels):
    raise DataError(f"dataset.image_{what} has {len(values)} values for images of {channels} channels")
  return np.broadcast_to(np.asarray(values, np.float32), (channels,)).copy()


def normalisation(source: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The (mean, std) a source's images are normalised with: its view's, else [-1, 1]."""
  return getattr(source, "image_mean", DEFAULT_MEAN), getattr(source, "image_std", DEFAULT_STD)
