"""Device prefetch for the training loop: the next batch is read and placed while the step runs.

JAX dispatches a step asynchronously, so reading, transforming and placing batch k+1 right after the
step for batch k is dispatched overlaps host work with device work (the Flax examples'
`prefetch_to_device`). The catch is checkpointing: the data iterator is then a batch ahead of the
trained state, and saving its current state would skip the prefetched batch on resume. `DevicePrefetch`
therefore remembers the iterator's state after each batch it hands out; a checkpoint saves
`consumed_state()`, the state after the last batch a step actually trained on, which keeps resumed
runs bitwise equal to uninterrupted ones.
"""

import collections
import copy
import json
import time
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

Element = TypeVar("Element")
Element_co = TypeVar("Element_co", covariant=True)
Placed = TypeVar("Placed")

# A data iterator's saved position: JSON (grain's `DatasetIterator.get_state`).
State = Mapping[str, object]


class StatefulIterator(Protocol[Element_co]):
  """An iterator whose position can be read (grain's `DatasetIterator`)."""

  def __next__(self) -> Element_co: ...

  def get_state(self) -> State: ...


class IteratorState:
  """A saved data-iterator state that grain's checkpoint handler writes as the iterator itself would."""

  def __init__(self, state: State):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state, indent=4).encode()


class DevicePrefetch(Generic[Element, Placed]):
  """Yields `place(batch)` for the batches of `iterator`, `size` batches ahead of the consumer."""

  def __init__(self, iterator: StatefulIterator[Element], place: Callable[[Element], Placed], size: int = 1):
    self._iterator = iterator
    self._place = place
    self._size = size
    self._queue: collections.deque[tuple[Placed, State]] = collections.deque()
    self._consumed = copy.deepcopy(iterator.get_state())

  def __iter__(self) -> "DevicePrefetch[Element, Placed]":
    return self

  def __next__(self) -> Placed:
    if not self._queue:
      self._fill(1)
    batch, state = self._queue.popleft()
    self._consumed = state
    self._fill(self._size)  # Runs while the previously dispatched step computes.
    return batch

  def next_timed(self) -> tuple[Placed, float]:
    """(the next batch, the seconds the call took): the time the loop spent in the input pipeline
    (reading, transforming and placing batches), not overlapped by anything it dispatched before."""
    start = time.perf_counter()
    batch = next(self)
    return batch, time.perf_counter() - start

  def _fill(self, size: int) -> None:
    while len(self._queue) < size:
      batch = self._place(next(self._iterator))
      self._queue.append((batch, copy.deepcopy(self._iterator.get_state())))

  def consumed_state(self) -> IteratorState:
    """The iterator's state after the last batch handed out (not after the prefetched ones)."""
    return IteratorState(self._consumed)

  def close(self) -> None:
    """Stops the iterator's worker processes (if it has any) and frees the batches they prefetched."""
    self._queue.clear()
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
