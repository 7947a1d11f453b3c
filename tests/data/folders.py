"""Generated image folders with manifests (and recordings), the raw input of the `captioned` builder."""

import csv
import json
import os
import wave

import numpy as np
from PIL import Image

from mmlearn.data import spectrogram
from mmlearn.data.manifest import SPLITS

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
SHAPES = ("square", "circle")


def draw(colour: str, shape: str, rng: np.random.Generator, size=(20, 24)) -> np.ndarray:
  """A coloured square or circle on dark noise, uint8 [H, W, 3]."""
  h, w = size
  y, x = np.mgrid[:h, :w]
  if shape == "square":
    inside = (abs(y - h / 2) < 6) & (abs(x - w / 2) < 6)
  else:
    inside = (y - h / 2) ** 2 + (x - w / 2) ** 2 < 49
  image = rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
  image[inside] = COLOURS[colour]
  return image


def write_folder(root, n: int, *, manifest="manifest.csv", split_column=False, audio=False) -> list[dict]:
  """`n` PNG images (every fifth RGBA, as version 1 converted those too) and a manifest (CSV or JSON
  lines): caption `a <colour> <shape> w<i>`, label `<colour>`, or with `audio` splits cycling
  train/validation/test and a noise recording per row."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  rows = []
  for i in range(n):
    colour, shape = list(COLOURS)[i % 2], SHAPES[i // 2 % 2]
    pixels = draw(colour, shape, rng)
    picture = Image.fromarray(pixels)
    if i % 5 == 4:
      picture = Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]), "RGBA")
    picture.save(os.path.join(root, "images", f"{i}.png"))
    row = {"image": f"images/{i}.png", "caption": f"a {colour} {shape} w{i}"}
    row["label" if not audio else "split"] = colour if not audio else SPLITS[i % 3]
    if split_column and not audio:
      row["split"] = SPLITS[i % 3]
    if audio:
      row["audio"] = f"audio/{i}.wav"
      write_wav(os.path.join(root, row["audio"]), 0.1 + 0.1 * i, rng)
    rows.append(row)
  write_manifest(os.path.join(root, manifest), rows)
  return rows


def write_manifest(path, rows: list[dict]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)


def write_wav(path: str, seconds: float, rng: np.random.Generator) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  samples = (rng.normal(0, 3000, int(spectrogram.SAMPLE_RATE * seconds))).astype("<i2")
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(spectrogram.SAMPLE_RATE)
    w.writeframes(samples.tobytes())
