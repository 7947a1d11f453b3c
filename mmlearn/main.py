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

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mmlearn import cli, parallel
from mmlearn.errors import USER_ERRORS, fail
from mmlearn.train import loop, profiler

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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  try:  # Before anything touches a device: JAX fixes the device list on first use.
    settings = parallel.distributed_settings(
      {
        "coordinator_address": FLAGS.coordinator_address,
        "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id,
      }
    )
    parallel.initialize_distributed(**settings, auto=FLAGS.distributed)
    logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    loop.train_and_evaluate(
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
  app.run(main, flags_parser=cli.parse_flags)
