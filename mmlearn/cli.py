"""What every command shares: flags whose mistakes are one line, library logs kept quiet, one exit status.

`mmlearn.main` parses `--config=FILE[:ARG]` and its `--config.KEY=VALUE` overrides with
`parse_flags`: a config file that does not load, or an override of a key the config lacks, is one
`error:` line naming the file or the key (with the closest key, or the task whose section it is), not
a traceback through absl. `quiet_library_logs` drops orbax's, TFDS's and JAX's INFO lines (dozens per
checkpoint or restore), so a command prints its progress and results; `--verbosity=1` shows everything.
"""

import logging as std_logging
import sys
from typing import Any

from absl import flags, logging

from mmlearn import data
from mmlearn.config import checks, files
from mmlearn.errors import ConfigError, fail

NOISY_LIBRARIES = ("orbax", "tensorflow_datasets", "jax", "optax")
# orbax warns of what a tool asked for when it opens a run's checkpoints to read them: not news to a user.
EXPECTED_WARNINGS = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")


def config_path(argv: list[str]) -> str | None:
  """The `FILE[:ARG]` of `--config=FILE[:ARG]` (or `--config FILE`) in `argv`, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.removeprefix("--config=")
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad config file or `--config.*` override is one line, not a traceback."""
  spec = config_path(argv)
  path = None if spec is None else files.split_spec(spec)[0]
  try:
    if path is not None:
      files.check_exists(path)
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except ConfigError as e:
    fail(e)
  except Exception as e:
    if path is not None and (in_file := files.error_in_file(path, e)) is not None:
      fail(in_file)
    if isinstance(e, KeyError | AttributeError | TypeError | ValueError):  # config_flags: a bad override.
      fail(override_error(spec, argv) or ConfigError(unwrap(e)), prefix="bad --config override: ")
    raise
  raise AssertionError("unreachable")  # `fail` exits.


def override_error(spec: str | None, argv: list[str]) -> ConfigError | None:
  """The error of the first `--config.KEY=...` whose KEY the config lacks, naming what it may have meant."""
  if spec is None:
    return None
  config = files.get_config(spec)
  known = list(checks.flatten(config))
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg.removeprefix("--config.").split("=", 1)[0]
    if key in known or any(k.startswith(f"{key}.") for k in known):
      continue
    if key.startswith("evals."):
      entries = ", ".join(config.evals) or "none"
      return ConfigError(
        f"config.evals has no entry {key.split('.')[1]!r} (it has: {entries}); evaluators are added in "
        "a config file (config.evals.NAME = {'type': ..., 'split': ...}), and the command line may "
        "then change their keys"
      )
    if key.startswith("dataset.options."):
      return options_error(config, key.removeprefix("dataset.options."))
    free = next((k for k in known if key.startswith(f"{k}.")), None)
    if free is not None:  # A sub-tree whose keys the config file chooses (modalities, builder options).
      node = config
      for part in free.split("."):
        node = node[part]
      has = ", ".join(node) or "none"
      return ConfigError(
        f"config.{free} has no key {key[len(free) + 1 :]!r} (it has: {has}); its keys are chosen in the "
        "config file, and the command line may change them"
      )
    return checks.unknown_key(key, known, config.task)
  return None


def options_error(config: Any, option: str) -> ConfigError:
  """An override of a builder option the config file did not set: names the builder's documented options
  (their defaults apply unless the config file sets them; the command line changes only what it set)."""
  has = ", ".join(config.dataset.options) or "none"
  message = f"config.dataset.options has no key {option!r} (it has: {has})"
  if option in config.dataset:
    return ConfigError(f"{message}; did you mean --config.dataset.{option}?")
  try:
    documented = getattr(data.get_builder_class(config.dataset.name), "OPTIONS", None)
  except ConfigError:  # An unknown dataset name: the run reports that itself.
    documented = None
  if documented:
    names = ", ".join(f"{name}={value!r}" for name, value in documented.items())
    message += f"; dataset {config.dataset.name!r} documents: {names}"
  return ConfigError(
    f"{message}. Set options in the config file (config.dataset.options = {{...}}); the command line may "
    "then change them"
  )


def unwrap(error: BaseException) -> str:
  """The innermost message of `AttributeError(KeyError(str))`, as config_flags raises for unknown keys."""
  message: object = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return str(message)


def quiet_library_info(record: std_logging.LogRecord) -> bool:
  """Drops the INFO lines of `NOISY_LIBRARIES`, keeping their warnings and errors, and mmlearn's own.

  Also drops orbax's tracebacks of a failed save or restore thread (the exception reaches the command,
  which reports it in its one `error:` line) and its warnings that a checkpoint was opened read-only.
  """
  if "/orbax/" in record.pathname and (record.exc_info or record.getMessage().startswith(EXPECTED_WARNINGS)):
    return False
  noisy = any(f"/{library}/" in record.pathname for library in NOISY_LIBRARIES)
  return record.levelno > std_logging.INFO or not noisy


def ignore_closed_event_loops(unraisable: "sys.UnraisableHookArgs") -> None:
  """Silences tensorstore callbacks that land on orbax's closed event loop after a failed write.

  When one write of a checkpoint fails, orbax abandons the others; their completions then call into
  an event loop that no longer exists. That is noise after the reported error, not a second problem.
  """
  if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def quiet_library_logs() -> None:
  """Unless `--verbosity` asks for more: library INFO lines and closed-event-loop noise are dropped."""
  if logging.get_verbosity() <= logging.INFO:
    logging.get_absl_handler().addFilter(quiet_library_info)
    sys.unraisablehook = ignore_closed_event_loops
