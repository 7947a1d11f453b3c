"""An exclusive lock on a file, held by a process and released when it exits, however it exits.

Workdirs (one trainer at a time) and prepared datasets (one preparation at a time) are guarded by an
`flock` on a file beside them, which the kernel releases when the holding process dies (kill -9
included), so a stale lock never blocks the next run. The holder writes its pid into the file, so the
refused process can say who holds it.
"""

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def held(path: str, busy: Callable[[str], Exception], *, wait: bool = False) -> Iterator[None]:
  """Holds the lock of `path`. If another process holds it: raises `busy(holder's pid)`, or with `wait`
  blocks until it is released. The file stays (removing it would race with a waiting process)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise busy(holder) from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # A full disk: name the file, as every other failed write does.
      raise OSError(e.errno, e.strerror, path) from None
    yield
  finally:
    os.close(fd)
