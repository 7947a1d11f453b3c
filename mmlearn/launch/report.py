"""Tables and charts of finished runs: CSV, markdown and a bar chart (matplotlib, Agg, no display)."""

import csv
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

from mmlearn.runs.selection import minimised

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
