"""One `error:` line for bad input, shared by `main` and the scripts that read runs back.

The user sees what is wrong (a misspelt key, a missing file, a diverged run) instead of a traceback, and
the exit status is 1, so shell loops and launchers can tell a failed run from a finished one.
"""

import sys

# What bad input raises: config mistakes, unknown names, missing or damaged files, a non-finite loss.
USER_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OSError, FloatingPointError)


def fail(error: BaseException, prefix: str = "") -> None:
  """Ends the process with one line on stderr naming the problem (the traceback goes to the debug log)."""
  message = error
  while isinstance(message, BaseException) and message.args:  # Unwrap AttributeError(KeyError(str)).
    message = message.args[0]
  message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"error: {prefix}{type(error).__name__}: {message}", file=sys.stderr)
  sys.exit(1)
