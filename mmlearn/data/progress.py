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
  """Counts done items of `total` (None: unknown); `update` logs `what: done/total (p%), rate, elapsed, ETA`
  when one is due."""

  def __init__(
    self, what: str, total: int | None, *, unit: str = "", every_s: float | None = None, done: int = 0
  ):
    """`done` items were finished before (a resumed pass): counted as done, not in the rate."""
    self.what, self.unit = what, unit
    self.total = None if total is None else max(int(total), 0)
    self.every_s = EVERY_S if every_s is None else every_s
    self.start = time.perf_counter()
    self.next_line = self.start + max(QUIET_S, self.every_s)
    self.done = self.first = done
    self.logged = False

  def line(self, now: float) -> str:
    elapsed = now - self.start
    unit = f" {self.unit}" if self.unit else ""
    rate = f"{(self.done - self.first) / max(elapsed, 1e-9):,.0f}{unit}/s"
    if self.total is None:
      return f"{self.what}: {self.done:,}{unit}, {rate}, elapsed {_clock(elapsed)}"
    fraction = self.done / self.total if self.total else 1.0
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
    eta_text = _clock(eta) if eta == eta else "?"
    return (
      f"{self.what}: {self.done:,}/{self.total:,}{unit} ({100 * fraction:.0f}%), {rate}, "
      f"elapsed {_clock(elapsed)}, ETA {eta_text}"
    )

  def update(self, done: int | None = None) -> None:
    """Marks `done` items finished (default: one more)."""
    self.done = self.done + 1 if done is None else done
    now = time.perf_counter()
    if now >= self.next_line and (self.total is None or self.done < self.total):
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
