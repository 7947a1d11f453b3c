"""Data parallelism: map a per-device step over every device with `jax.shard_map` (default) or `jax.pmap`.

Steps are written as per-device code: they see their device's slice of the global batch and average
gradients and metrics with `lax.pmean(..., AXIS)`. Parameters are replicated. Under `shard_map` with the
default `check_vma=True`, `jax.grad` of a device-varying loss with respect to replicated (invariant)
parameters already *sums* the gradient over devices (the transpose of the implicit broadcast is a
psum), so a pmap-style `pmean` on top would be N times too large. Marking the parameters as varying
first (`lax.pcast(..., to="varying")`) fixes the gradient, but then every `scan` in the model (an LSTM)
must make its initial carry varying too, leaking parallelism into model code. So the step is mapped
with `check_vma=False`, where, as under `pmap`, the per-device gradient is local and the explicit
`pmean` averages it: both modes give the parameters of a single-device run (tested on 4 devices).

Multi-host: `initialize_distributed` joins the processes of one run (before anything touches a device);
the mesh then spans every device of every process, each process feeds only its share of each global
batch, and both modes give the parameters of a single-process run (tested with 2 CPU processes).
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmlearn.errors import ConfigError

AXIS = "batch"
MODES = ("shard_map", "pmap")


class DataParallel:
  """One 1-D device mesh over all devices of all processes, and how to move data and steps onto it.

  Host-side state is always a plain (unreplicated) pytree; batches are the process-local slice of the
  global batch, leading axis = examples. Both modes take and return the same layouts, so the trainer
  does not know which one it runs.
  """

  def __init__(self, mode: str = "shard_map", devices: Sequence[jax.Device] | None = None):
    if mode not in MODES:
      raise ConfigError(f"unknown parallel.mode {mode!r}; known: {', '.join(MODES)}")
    self.mode = mode
    self.devices = list(jax.devices() if devices is None else devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch_size(self, global_batch: int) -> int:
    """Returns the per-process batch size; the global batch must split evenly over all devices."""
    if global_batch % self.num_devices:
      raise ConfigError(f"batch size {global_batch} is not divisible by the {self.num_devices} devices")
    return global_batch // jax.process_count()

  def replicate(self, tree: Any) -> Any:
    """Copies `tree` (the same value on every process) to every device, through host memory.

    A process cannot `device_put` an array on its own device onto other processes' devices, but
    each can place its host copy of the same value on its own devices, which is all replication needs.
    """
    return jax.device_put(jax.device_get(tree), self.replicated)

  def shard(self, local_batch: dict[str, np.ndarray]) -> Any:
    """Places this process's part of the global batch on its devices, split along the example axis."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), local_batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), local_batch)

  def map(self, step: Callable[..., Any], *, sharded_args: tuple[int, ...], donate_argnums=()) -> Callable:
    """Compiles a per-device `step`; args listed in `sharded_args` are split by example, others replicated.

    Every output must be device-invariant (already reduced with `pmean`/`psum`), and comes back
    replicated on all devices.
    """
    if self.mode == "pmap":
      compiled: dict[int, Callable] = {}

      def wrapper(*args):
        if len(args) not in compiled:
          in_axes = tuple(0 if i in sharded_args else None for i in range(len(args)))
          compiled[len(args)] = jax.pmap(
            step, AXIS, in_axes=in_axes, out_axes=None, donate_argnums=donate_argnums, devices=self.devices
          )
        return compiled[len(args)](*args)

      return wrapper

    def make(*args):
      specs = tuple(P(AXIS) if i in sharded_args else P() for i in range(len(args)))
      return jax.shard_map(step, mesh=self.mesh, in_specs=specs, out_specs=P(), check_vma=False)(*args)

    return jax.jit(make, donate_argnums=donate_argnums)


# Each of `initialize_distributed`'s arguments can come from a flag of the same name or this variable.
ENV_VARS = {
  "coordinator_address": "MMLEARN_COORDINATOR_ADDRESS",
  "num_processes": "MMLEARN_NUM_PROCESSES",
  "process_id": "MMLEARN_PROCESS_ID",
}


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
) -> bool:
  """Joins a multi-process run with `jax.distributed.initialize`; returns whether it did.

  All three values, or none (a single-process run). With `auto`, JAX detects the missing ones from a
  cluster's environment (Slurm, Open MPI, Cloud TPU, Kubernetes). Checked here because JAX reports a
  bad combination late, and an unreachable coordinator aborts the process instead of raising.
  """
  values = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  missing = [f"--{name} (${ENV_VARS[name]})" for name, value in values.items() if value is None]
  if not auto and len(missing) == len(values):
    return False
  if not auto and missing:
    raise ConfigError(f"a multi-process run needs all three settings; missing: {', '.join(missing)}")
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"num_processes must be at least 1, got {num_processes}")
  if process_id is not None and (process_id < 0 or num_processes is not None and process_id >= num_processes):
    raise ConfigError(f"process_id must be in [0, num_processes), got {process_id} of {num_processes}")
  if coordinator_address is not None and not coordinator_address.rpartition(":")[2].isdigit():
    raise ConfigError(f"coordinator_address must be HOST:PORT, got {coordinator_address!r}")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


@contextlib.contextmanager
def process_zero_first(name: str) -> Iterator[None]:
  """Runs the body on process 0 before the others, e.g. so a shared dataset directory is prepared once.

  Process 0 reaches the barrier even when its body fails, so the others go on (and meet the error
  themselves) instead of waiting for it.
  """
  first = jax.process_index() == 0
  if jax.process_count() > 1 and not first:
    multihost_utils.sync_global_devices(name)
  try:
    yield
  finally:
    if jax.process_count() > 1 and first:
      multihost_utils.sync_global_devices(name)
