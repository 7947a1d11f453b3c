"""Tables and charts of finished runs: CSV, markdown and a bar chart (matplotlib, Agg, no display)."""

import csv
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """One row per dict; the columns are the first row's keys."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
  escaped = [[str(cell).replace("|", r"\|") for cell in row] for row in rows]  # A '|' would split a cell.
  lines += [f"| {' | '.join(row)} |" for row in escaped]
  return "\n".join(lines) + "\n"


def format_metric(name: str, value: float | None) -> str:
  """Accuracies, recalls and F1 as percentages, anything else with 4 significant digits; missing: '-'."""
  if value is None or math.isnan(value):
    return "-"
  percentage = any(word in name for word in ("accuracy", "recall", "f1"))
  return f"{value:.2%}" if percentage else f"{value:.4g}"


def bar_chart(
  path: str,
  names: Sequence[str],
  values: Sequence[float],
  *,
  ylabel: str,
  title: str,
  errors: Sequence[float] | None = None,
) -> None:
  """One bar per name (a NaN value leaves its place empty), with optional error bars."""
  fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 4))
  ax.bar(names, values, yerr=errors, capsize=4 if errors is not None else 0, color="tab:blue")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.set_xlim(-0.6, len(names) - 0.4)  # Keeps the place of a trailing NaN bar.
  plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def confusion_chart(path: str, counts: np.ndarray, class_names: Sequence[str], *, title: str) -> np.ndarray:
  """A confusion matrix (rows: true class) as a PNG; returns the picture as an RGB uint8 [H, W, 3] array.

  Each cell shows its count and is coloured by its share of the row (the true class's recall on the
  diagonal), so rare classes are as readable as frequent ones. Cell counts are written up to 30 classes
  and axis names up to 60; beyond that they would overlap.
  """
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
  picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  fig.savefig(path, dpi=fig.dpi)
  plt.close(fig)
  return picture


MINIMISED = ("loss", "error", "distance", "fid", "median_rank", "nll", "bpd")


def minimised(metric: str) -> bool:
  """Whether a smaller value of `metric` is better (judged by the last part of its name)."""
  last = metric.rsplit("/", 1)[-1].lower()
  return any(word in last for word in MINIMISED)


def select(values: list[float], metric: str) -> int | None:
  """The index of the best finite value (lowest for losses, errors and distances), or None."""
  finite = [(v, i) for i, v in enumerate(values) if v == v and abs(v) != float("inf")]
  if not finite:
    return None
  return (min if minimised(metric) else max)(finite)[1]


def test_counterpart(metric: str) -> str:
  """The test metric reported beside a validation one (`[best/]validation/x` -> `[best/]test/x`)."""
  parts = metric.split("/")
  if "validation" in parts[:2]:
    parts[parts.index("validation")] = "test"
  return "/".join(parts)


def protocol_line(selected_by: str, reported: str) -> str:
  """The one line every results table states its protocol with."""
  if selected_by == reported:
    return f"Compared on {selected_by}."
  return f"Selected on {selected_by}; {reported} reported once, for the selected run."
