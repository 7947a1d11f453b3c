"""Command-line entry point: `python -m mmlearn.main --config=configs/default.py --workdir=runs/x`.

Config fields are overridden with flags such as `--config.optimizer.learning_rate=0.1`. A mistake in the
config or the data (unknown key or name, wrong type, missing or corrupt file, non-finite loss) ends the
run with one `error:` line on stderr and exit status 1; run with `--verbosity=1` for the traceback.
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mmlearn import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OSError, FloatingPointError)


def fail(error: BaseException, prefix: str = "") -> None:
  """Ends the run with one line on stderr naming the problem (the traceback goes to the debug log)."""
  message = error
  while isinstance(message, BaseException) and message.args:  # Unwrap AttributeError(KeyError(str)).
    message = message.args[0]
  message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"error: {prefix}{type(error).__name__}: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad `--config.*` override (e.g. an unknown key) is one line, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except USER_ERRORS as e:  # config_flags reports an unknown key as KeyError/AttributeError.
    fail(e, prefix="bad --config override: ")


def quiet_library_info(record) -> bool:
  """Drops orbax's and TFDS's INFO lines (dozens per checkpoint), keeping their warnings and errors."""
  noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
  return record.levelno > std_logging.INFO or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() <= logging.INFO:
    logging.get_absl_handler().addFilter(quiet_library_info)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug("traceback:", exc_info=True)
    fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
