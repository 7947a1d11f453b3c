"""Sample grids: [-1, 1] image arrays -> one RGB uint8 image, a row per condition, for logs and scripts.

Kept apart from the MVAE task and its evaluator because it is plain numpy about pictures: the evaluator
logs grids as `metric_writer.Image`s, and `scripts/generate.py` writes samples as PNGs with `to_uint8`.
"""

import numpy as np

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
