"""The project's error types, and the one `error:` line that bad input ends a command with.

Bad input (a misspelt config key, an unknown name, a missing or damaged file, a diverged run, a busy
workdir) raises one of the `Error` subclasses below, or an `OSError` from the file system; `main` and
the scripts print it as one line and exit with status 1, so shell loops and launchers can tell a failed
run from a finished one. Anything else is a bug (in mmlearn or in a researcher's new task or fusion)
and keeps its traceback: catching builtin `TypeError`s here would disguise a bug as a config typo.

The config and data types also derive from `ValueError`, so code that guards against bad values with
`except ValueError` keeps working.
"""

import errno
import sys


class Error(Exception):
  """Base of the project's bad-input errors."""


class ConfigError(Error, ValueError):
  """A config key, type or value that cannot run: unknown key or name, wrong type, impossible value."""


class DataError(Error, ValueError):
  """A dataset that cannot be read or built: corrupt or mismatched files, an unknown word or split."""


class CheckpointError(Error, ValueError):
  """A checkpoint that cannot be restored: corrupt, non-finite, or saved by a different model."""


class WorkdirError(Error):
  """A workdir that cannot be used: locked by another process, or holding a run with another config."""


class DivergedError(Error, FloatingPointError):
  """A non-finite loss, gradient norm or parameter norm."""


# What a command reports in one line. OSError covers missing files, read-only or full disks.
USER_ERRORS = (Error, OSError)


def one_line(error: BaseException) -> str:
  """`error`'s message on one line, with an OSError's file name and reason (not just its errno)."""
  if isinstance(error, OSError) and error.strerror:
    names = " -> ".join(repr(n) for n in (error.filename, error.filename2) if n is not None)
    message = f"{names}: {error.strerror}" if names else error.strerror
  elif isinstance(error, OSError) and error.args and isinstance(error.args[0], int):
    message = f"{errno.errorcode.get(error.args[0], error.args[0])}: {' '.join(map(str, error.args[1:]))}"
  else:
    message = str(error)
  return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def fail(error: BaseException, prefix: str = "") -> None:
  """Ends the process with one line on stderr naming the problem (the traceback goes to the debug log)."""
  print(f"error: {prefix}{type(error).__name__}: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(1)
