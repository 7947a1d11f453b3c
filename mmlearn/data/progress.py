"""Progress lines with an ETA for long passes (preparing a dataset, decoding a split, evaluating).

A pass that ends within `QUIET_S` seconds logs nothing, so tests and short evaluations stay quiet;
a longer one logs a line every `EVERY_S` seconds and a last line when it ends, so a person watching a
2-minute retrieval evaluation sees it move and knows when it will end. Lines go to the absl log (INFO).
"""

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from absl import logging

QUIET_S = 10.0
EVERY_S = 10.0

T = TypeVar("T")


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Counts done items of `total`; `update` logs `what: done/total (p%), elapsed, ETA` when one is due."""

  def __init__(self, what: str, total: int, *, unit: str = "", every_s: float | None = None):
    self.what, self.total, self.unit = what, max(int(total), 0), unit
    self.every_s = EVERY_S if every_s is None else every_s
    self.start = time.perf_counter()
    self.next_line = self.start + max(QUIET_S, self.every_s)
    self.done = 0
    self.logged = False

  def line(self, now: float) -> str:
    elapsed = now - self.start
    fraction = self.done / self.total if self.total else 1.0
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
    eta_text = _clock(eta) if eta == eta else "?"
    unit = f" {self.unit}" if self.unit else ""
    return (
      f"{self.what}: {self.done:,}/{self.total:,}{unit} ({100 * fraction:.0f}%), "
      f"elapsed {_clock(elapsed)}, ETA {eta_text}"
    )

  def update(self, done: int | None = None) -> None:
    """Marks `done` items finished (default: one more)."""
    self.done = self.done + 1 if done is None else done
    now = time.perf_counter()
    if now >= self.next_line and self.done < self.total:
      logging.info("%s", self.line(now))
      self.logged = True
      self.next_line = now + self.every_s

  def finish(self) -> None:
    """The last line, only if a line was logged before (a quick pass stays silent)."""
    if self.logged:
      now = time.perf_counter()
      logging.info("%s: done in %s", self.what, _clock(now - self.start))


def track(items: Iterable[T], what: str, total: int, *, unit: str = "") -> Iterator[T]:
  """Yields `items`, logging progress as each one is consumed."""
  progress = Progress(what, total, unit=unit)
  for item in items:
    yield item
    progress.update()
  progress.finish()
