"""Pictures of metrics: an `Image` metric, grids of samples ([-1, 1] arrays -> RGB uint8), confusion charts.

The `samples` evaluator logs grids as `Image`s (the metric writer saves them as PNGs and to TensorBoard);
`scripts/generate.py` writes samples with `to_uint8`; the metric writer draws a `ConfusionMatrix` with
`confusion_chart`.
"""

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
  from matplotlib.backends.backend_agg import FigureCanvasAgg


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
  """An RGB picture reported as a metric: `pixels` uint8 [H, W, 3].

  numpy sees the pixels, so `np.ndim(value) == 0` keeps it out of scalar records, as `ConfusionMatrix`.
  """

  pixels: np.ndarray

  def __post_init__(self):
    pixels = np.asarray(self.pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
      raise ValueError(f"an Image holds uint8 [H, W, 3] pixels, got {pixels.dtype} {pixels.shape}")

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self.pixels, dtype=dtype)


GRID_TILE = 64  # Grid tiles are upscaled by an integer factor to at least this many pixels.


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 RGB (a single channel is repeated)."""
  x = np.rint((np.clip(np.asarray(x, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def sample_grid(real: np.ndarray | None, samples: np.ndarray, border: int = 2) -> np.ndarray:
  """An RGB uint8 grid: one row per condition, its real item first (if given), then its samples.

  real: [R, H, W, C] or None; samples: [R, S, H, W, C], in [-1, 1]. Tiles are upscaled to >= `GRID_TILE`
  pixels and separated by gray borders.
  """
  rows = samples if real is None else np.concatenate([np.asarray(real)[:, None], samples], axis=1)
  scale = max(1, -(-GRID_TILE // rows.shape[2]))
  tiles = to_uint8(rows).repeat(scale, axis=2).repeat(scale, axis=3)
  r, c, h, w, _ = tiles.shape
  grid = np.full((r * (h + border) + border, c * (w + border) + border, 3), 128, np.uint8)
  for i in range(r):
    for j in range(c):
      top, left = border + i * (h + border), border + j * (w + border)
      grid[top : top + h, left : left + w] = tiles[i, j]
  return grid


def confusion_chart(path: str, counts: np.ndarray, class_names: Sequence[str], *, title: str) -> np.ndarray:
  """A confusion matrix (rows: true class) as a PNG; returns the picture as an RGB uint8 [H, W, 3] array.

  Each cell shows its count and is coloured by its share of the row (the true class's recall on the
  diagonal), so rare classes are as readable as frequent ones. Cell counts are written up to 30 classes
  and axis names up to 60; beyond that they would overlap.
  """
  import matplotlib  # noqa: PLC0415  (only runs that draw a matrix pay for importing it)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  counts = np.asarray(counts, np.float64)
  num = len(counts)
  rows = counts.sum(1, keepdims=True)
  shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
  side = min(4 + 0.45 * num, 24)
  fig, ax = plt.subplots(figsize=(side + 1, side))
  image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  if num <= 60:
    ax.set_xticks(range(num), class_names)
    ax.set_yticks(range(num), class_names)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
  if num <= 30:
    for (i, j), count in np.ndenumerate(counts):
      text = f"{count:.0f}" if count == round(count) else f"{count:.3g}"
      ax.text(
        j, i, text, ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.5 else "black"
      )
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  fig.tight_layout()
  fig.canvas.draw()
  # pyplot types the canvas as its backends' base class; the Agg backend's (chosen above) has the pixels.
  picture = np.asarray(cast("FigureCanvasAgg", fig.canvas).buffer_rgba())[..., :3].copy()
  fig.savefig(path, dpi=fig.dpi)
  plt.close(fig)
  return picture
