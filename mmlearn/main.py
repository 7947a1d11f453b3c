"""Command-line entry point: `python -m mmlearn.main --config=configs/default.py --workdir=runs/x`.

Config fields are overridden with flags such as `--config.optimizer.learning_rate=0.1`. A mistake in the
config or the data (unknown key or name, wrong type, missing or corrupt file, non-finite loss, a busy
workdir or one holding a run with another config) ends the run with one `error:` line on stderr and exit
status 1 (`mmlearn.errors`); run with `--verbosity=1` for the traceback. Any other exception is a bug
and keeps its traceback.

Re-running a command resumes its workdir from the latest checkpoint. `--allow_config_changes` lets the
resume change logging, evaluation and length keys (`mmlearn.runs.workdir.RESUMABLE_KEYS`); `--fallback`
resumes from the newest intact checkpoint when the latest is damaged.

A multi-process run starts one such command per process, each with `--coordinator_address=HOST:PORT`
(process 0's), `--num_processes` and its own `--process_id` (or `$MMLEARN_COORDINATOR_ADDRESS`,
`$MMLEARN_NUM_PROCESSES`, `$MMLEARN_PROCESS_ID`), or `--distributed` where JAX can detect them
(Slurm, Open MPI, Cloud TPU, Kubernetes).
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mmlearn import parallel
from mmlearn.config import files as config_files
from mmlearn.errors import USER_ERRORS, ConfigError, fail
from mmlearn.train import loop as train
from mmlearn.train import profiler

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_string("coordinator_address", None, "Multi-process run: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, 0 .. num_processes - 1.")
flags.DEFINE_bool(
  "distributed", False, "Multi-process run: let JAX detect the unset values from the cluster."
)
flags.DEFINE_bool(
  "allow_config_changes", False, "Resume even if logging, evaluation or length keys of the config changed."
)
flags.DEFINE_bool("fallback", False, "Resume from the newest intact checkpoint if the latest is damaged.")
flags.DEFINE_string(
  "profile_steps", None, "START,END: write a jax.profiler trace of those steps to WORKDIR/profile."
)


def config_path(argv: list[str]) -> str | None:
  """The file of `--config=FILE[:ARG]` (or `--config FILE`) in `argv`, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return config_files.split_spec(arg.removeprefix("--config="))[0]
    if arg == "--config" and i + 1 < len(argv):
      return config_files.split_spec(argv[i + 1])[0]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad config file or `--config.*` override is one line, not a traceback."""
  path = config_path(argv)
  try:
    if path is not None:
      config_files.check_exists(path)
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except ConfigError as e:
    fail(e)
  except Exception as e:
    if path is not None and (in_file := config_files.error_in_file(path, e)) is not None:
      fail(in_file)
    if isinstance(e, KeyError | AttributeError | TypeError | ValueError):  # config_flags: a bad override.
      fail(ConfigError(unwrap(e)), prefix="bad --config override: ")
    raise


def unwrap(error: BaseException) -> str:
  """The innermost message of `AttributeError(KeyError(str))`, as config_flags raises for unknown keys."""
  message: object = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return str(message)


def quiet_library_info(record) -> bool:
  """Drops orbax's and TFDS's INFO lines (dozens per checkpoint), keeping their warnings and errors.

  Also drops orbax's tracebacks of a failed save or restore thread: the exception reaches the trainer,
  which reports it in its one `error:` line (`--verbosity=1` shows everything).
  """
  if "/orbax/" in record.pathname and record.exc_info:
    return False
  noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
  return record.levelno > std_logging.INFO or not noisy


def ignore_closed_event_loops(unraisable) -> None:
  """Silences tensorstore callbacks that land on orbax's closed event loop after a failed write.

  When one write of a checkpoint fails, orbax abandons the others; their completions then call into
  an event loop that no longer exists. That is noise after the reported error, not a second problem.
  """
  if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def distributed_settings() -> dict[str, str | int | None]:
  """The multi-process flags, each unset one taken from its `$MMLEARN_*` environment variable."""
  settings = {}
  for name, env in parallel.ENV_VARS.items():
    value = FLAGS[name].value
    if value is None and os.environ.get(env):
      value = os.environ[env]
      if name != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ConfigError(f"${env} must be an integer, got {value!r}") from None
    settings[name] = value
  return settings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() <= logging.INFO:
    logging.get_absl_handler().addFilter(quiet_library_info)
    sys.unraisablehook = ignore_closed_event_loops
  try:  # Before anything touches a device: JAX fixes the device list on first use.
    parallel.initialize_distributed(**distributed_settings(), auto=FLAGS.distributed)
  except USER_ERRORS as e:
    fail(e)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(
      FLAGS.config,
      FLAGS.workdir,
      allow_config_changes=FLAGS.allow_config_changes,
      fallback=FLAGS.fallback,
      profile_steps=profiler.parse_steps(FLAGS.profile_steps),
    )
  except USER_ERRORS as e:
    logging.debug("traceback:", exc_info=True)
    fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
