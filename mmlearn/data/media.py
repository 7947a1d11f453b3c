"""Encoded media: images and recordings kept as their file bytes, decoded where they are read.

Real datasets are stored as their JPEG, PNG and wav bytes (a 224 px JPEG is ~15 KB; as a uint8 array it
is 150 KB), and decoded in the input pipeline's workers. Builders declare which features they store
encoded and how each decodes (`LocalBuilder.decoders`): the decoders here are plain functions of the
bytes and picklable settings, so worker processes can run them.

When a dataset is resized at preparation, each image is re-encoded once: a lossless source (PNG, GIF,
BMP, ...) as PNG, a JPEG as JPEG at `JPEG_QUALITY`.
"""

import dataclasses
import io

import numpy as np

from mmlearn.errors import DataError

JPEG_QUALITY = 95  # Re-encoding quality of resized JPEGs (libjpeg's scale; 4:4:4 chroma).
_WIDE_MODES = {"I;16": 8, "I;16B": 8, "I;16L": 8, "I": 24}  # 16/32-bit gray -> bits dropped to reach 8.


def _pil():
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (Pillow comes with matplotlib)

  return Image, UnidentifiedImageError


def _to_mode(image, channels: int):
  """RGB or gray; 16-bit gray keeps its top 8 bits (Pillow's own conversion clips it to 255)."""
  Image, _ = _pil()
  if image.mode in _WIDE_MODES:
    wide = np.asarray(image, np.uint32 if image.mode == "I" else np.uint16)
    image = Image.fromarray((wide >> _WIDE_MODES[image.mode]).astype(np.uint8), "L")
  return image.convert("RGB" if channels == 3 else "L")


def decode_image(data: bytes, channels: int = 3, where: str = "image") -> np.ndarray:
  """uint8 [H, W, channels] from encoded bytes (PNG, JPEG, anything Pillow reads); errors name `where`."""
  Image, UnidentifiedImageError = _pil()
  try:
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(_to_mode(image, channels), np.uint8)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise DataError(f"{where}: cannot decode the image ({e})") from None
  return array.reshape(*array.shape[:2], channels)


def image_format(data: bytes) -> str:
  """ "JPEG" for JPEG bytes, else "PNG" (the lossless format anything else is re-encoded to)."""
  return "JPEG" if data[:3] == b"\xff\xd8\xff" else "PNG"


def encode_image(array: np.ndarray, fmt: str = "PNG", quality: int = JPEG_QUALITY) -> bytes:
  """uint8 [H, W, 1 or 3] -> PNG or JPEG bytes (JPEG at `quality`, no chroma subsampling)."""
  Image, _ = _pil()
  picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  out = io.BytesIO()
  if fmt == "JPEG":
    picture.save(out, "JPEG", quality=quality, subsampling=0)
  else:
    picture.save(out, "PNG")
  return out.getvalue()


RESAMPLING = ("bilinear", "bicubic")  # Pillow's filters by name: a pretrained tower's processor names one.


def resize(image: np.ndarray, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
  """Resize of uint8 [H, W, C] with Pillow's `resample` filter (antialiased when shrinking)."""
  Image, _ = _pil()
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[2]
  picture = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(picture.resize((width, height), Image.Resampling[resample.upper()]), np.uint8)
  return out.reshape(height, width, channels)


@dataclasses.dataclass(frozen=True)
class ImageDecoder:
  """Encoded bytes -> uint8 [H, W, channels]; with `shape`, an image of another shape is an error (a
  dataset resized at preparation stores that shape only)."""

  channels: int = 3
  shape: tuple[int, int, int] | None = None

  def __call__(self, data: bytes) -> np.ndarray:
    array = decode_image(data, self.channels)
    if self.shape is not None and array.shape != tuple(self.shape):
      raise DataError(f"a stored image is {array.shape}, the dataset's shape is {tuple(self.shape)}")
    return array


def prepared_image(data: bytes, shape: tuple[int, int, int] | None, where: str, channels: int = 3) -> bytes:
  """What a builder stores for an image file's bytes: the bytes themselves when `shape` is None (after
  checking that they decode), else the image resized to `shape` and re-encoded once (module docstring)."""
  array = decode_image(data, shape[2] if shape else channels, where)
  if shape is None:
    return data
  return encode_image(resize(array, shape[0], shape[1]), image_format(data))
