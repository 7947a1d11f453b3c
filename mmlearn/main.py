"""Command-line entry point: `python -m mmlearn.main --config=configs/default.py --workdir=runs/x`.

Config fields are overridden with flags such as `--config.optimizer.learning_rate=0.1`. A mistake in the
config or the data (unknown key or name, wrong type, missing or corrupt file, non-finite loss) ends the
run with one `error:` line on stderr and exit status 1; run with `--verbosity=1` for the traceback.

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

from mmlearn import parallel, train
from mmlearn.errors import USER_ERRORS, fail

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
          raise ValueError(f"${env} must be an integer, got {value!r}") from None
    settings[name] = value
  return settings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() <= logging.INFO:
    logging.get_absl_handler().addFilter(quiet_library_info)
  try:  # Before anything touches a device: JAX fixes the device list on first use.
    parallel.initialize_distributed(**distributed_settings(), auto=FLAGS.distributed)
  except USER_ERRORS as e:
    fail(e)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug("traceback:", exc_info=True)
    fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
