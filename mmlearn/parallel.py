"""Data parallelism, optionally with sharded parameters: map a per-device step over every device.

Steps are written as per-device code and mapped with `jax.shard_map` (default) or `jax.pmap`: they see
their device's slice of the global batch and average gradients and metrics with `lax.pmean(..., AXIS)`.
Under `shard_map` with the default `check_vma=True`, `jax.grad` of a device-varying loss with respect to
replicated (invariant) parameters already *sums* the gradient over devices (the transpose of the
implicit broadcast is a psum), so a pmap-style `pmean` on top would be N times too large. Marking the
parameters as varying first (`lax.pcast(..., to="varying")`) fixes the gradient, but then every `scan`
in the model (an LSTM) must make its initial carry varying too, leaking parallelism into model code. So
the step is mapped with `check_vma=False`, where, as under `pmap`, the per-device gradient is local and
the explicit `pmean` averages it: in both modes each step computes the single-device step's update,
equal within float rounding (the device sums reorder the additions), so trajectories agree for a few
steps and then drift apart as any reordering of float sums makes them.

Sharded parameters (`config.parallel.shard_min_size` > 0, `shard_map` only) are FSDP's FULL_SHARD /
ZeRO-3 over the data-parallel group, on the same 1-D mesh: every device holds 1/N of the batch *and* 1/N
of every large parameter, of its optimizer state and of its EMA. The step stays per-device code with
explicit collectives (chosen over `jax.jit` with sharding annotations so the gradient maths above, the
BatchNorm `pmean` and the losses' `all_gather`s keep one reading in every mode); it calls four hooks
that are identities or plain `pmean`s when nothing is sharded:

    params = par.gather_params(state.params)      # all_gather (tiled): the full parameters, for the forward
    grads = grad(loss)(params, ...)               # local gradient of the full parameters
    grads = par.reduce_gradients(grads)           # reduce-scatter / N: this device's shard of the mean
    tx.update(grads, state.opt_state, state.params)  # elementwise on the shards
    par.global_norm(grads)                        # psum of the shards' squares + the replicated leaves'

Which leaves are split is data, not a code path: a leaf of `params`, `opt_state` or `ema_params` with at
least `shard_min_size` elements is split along its largest dimension divisible by the device count
(the first such on ties; `shard_dim`). The rule reads only the full shape, so Adam's moments and the EMA
get their parameter's layout without being matched to it, and a checkpoint can be restored on another
device count by recomputing the layout there. Everything else (small leaves, the step, the RNG, model
state such as BatchNorm statistics, optimizer counters) stays replicated. The optimizer must act
elementwise on sharded leaves (sgd, adam, adamw do); optax's `clip_by_global_norm` does not (it would
take the norm of the local shard), so gradient clipping uses `mmlearn.optim.clip_by_norm` with this
layout's `global_norm` (a psum of the shards' squares) instead.
`DataParallel.map` reads each argument's layout from its arrays' shardings, and `out_layouts` gives an
output the layout of an argument (the train step returns the state in the layout it took).

Multi-host: `initialize_distributed` joins the processes of one run (before anything touches a device);
the mesh then spans every device of every process, each process feeds only its share of each global
batch, and each step is the single-process step within float rounding, as above.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypedDict, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmlearn.errors import ConfigError

Tree = TypeVar("Tree")  # A pytree, returned with the same structure.

AXIS = "batch"
MODES = ("shard_map", "pmap")
# The train state's fields whose large leaves are split; every other field stays replicated.
SHARDED_FIELDS = ("params", "opt_state", "ema_params")


def shard_dim(shape: Sequence[int], num_devices: int, min_size: int) -> int | None:
  """The dimension a leaf of this full `shape` is split along, or None (replicated).

  At least `min_size` elements (0 = never split) and a dimension divisible by `num_devices`: the
  largest such dimension, the first on ties. Deterministic in the full shape alone, so every tree
  with the parameters' shapes (gradients, optimizer moments, EMA) gets the same layout on any mesh.
  """
  if min_size <= 0 or math.prod(shape) < min_size:
    return None
  divisible = [(size, -d) for d, size in enumerate(shape) if size % num_devices == 0 and size > 0]
  return -max(divisible)[1] if divisible else None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line `ConfigError` for a `config.parallel` that cannot run (called by config checks)."""
  check_layout(config.parallel.mode, config.parallel.shard_min_size)


def check_layout(mode: str, min_size: int) -> None:
  """A known mode, and sharding (`shard_min_size` > 0) only where `shard_map` runs the step."""
  if mode not in MODES:
    raise ConfigError(f"unknown parallel.mode {mode!r}; known: {', '.join(MODES)}")
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ConfigError(f"parallel.shard_min_size must be an integer >= 0 (0 = replicate), got {min_size!r}")
  if min_size > 0 and mode != "shard_map":
    raise ConfigError(
      f"parallel.shard_min_size={min_size} shards parameters, which needs parallel.mode='shard_map' "
      f"(got {mode!r}); use shard_min_size=0 with pmap"
    )


class DataParallel:
  """One 1-D device mesh over all devices of all processes, and how to move data and steps onto it.

  Host-side state is a plain (unreplicated) pytree; `place_state` lays it out on the mesh (replicated,
  or with large leaves split when `shard_min_size` > 0). Batches are the process-local slice of the
  global batch, leading axis = examples. Both modes take and return the same layouts, so the trainer
  does not know which one it runs.
  """

  def __init__(
    self,
    mode: str = "shard_map",
    devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm] (jaxlib has no stubs)
    shard_min_size: int = 0,
  ):
    check_layout(mode, shard_min_size)
    self.mode = mode
    self.shard_min_size = shard_min_size
    self.devices = list(jax.devices() if devices is None else devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    # (full shape, split dim or None) of each parameter leaf, recorded by `place_state`; the per-device
    # hooks read it, since a shard's shape alone does not say which dimension was split.
    self._param_layout: tuple[Any, list[tuple[tuple[int, ...], int | None]]] | None = None
    self._layout_by_path: dict[str, tuple[tuple[int, ...], int | None]] = {}  # The same, by leaf path.

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch_size(self, global_batch: int) -> int:
    """Returns the per-process batch size; the global batch must split evenly over all devices."""
    if global_batch % self.num_devices:
      raise ConfigError(f"batch size {global_batch} is not divisible by the {self.num_devices} devices")
    return global_batch // jax.process_count()

  def spec(self, shape: Sequence[int]) -> P:
    """The partition spec of a shardable leaf of this full shape: P() or "batch" on its `shard_dim`."""
    d = shard_dim(shape, self.num_devices, self.shard_min_size)
    return P() if d is None else P(*([None] * d), AXIS)

  def state_shardings(self, state: Any) -> Any:
    """The `NamedSharding` of every leaf of a train state (host or abstract): see the module docstring."""

    def sharding(path, leaf):
      shardable = path and getattr(path[0], "name", getattr(path[0], "key", None)) in SHARDED_FIELDS
      spec = self.spec(np.shape(leaf)) if shardable else P()
      return NamedSharding(self.mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, state)

  def place_state(self, state: Tree) -> Tree:
    """Puts the train state on the devices in its layout (replicated, or large leaves split).

    Each device receives only its slice (`make_array_from_callback` reads it from the host copy), so
    no device ever holds a sharded leaf whole, and every process can do this with its own host copy.
    Remembers the parameters' layout for the per-device hooks.
    """
    host = jax.device_get(state)
    if self.shard_min_size == 0:
      placed = jax.device_put(host, self.replicated)
    else:

      def put(leaf, sharding):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

      placed = jax.tree.map(put, host, self.state_shardings(host))
    params = getattr(host, "params", None) if not isinstance(host, dict) else host.get("params")
    if params is not None:
      leaves, treedef = jax.tree.flatten(params)
      shapes = [tuple(np.shape(x)) for x in leaves]
      self._param_layout = (
        treedef,
        [(s, shard_dim(s, self.num_devices, self.shard_min_size)) for s in shapes],
      )
      paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
      self._layout_by_path = dict(zip(paths, self._param_layout[1], strict=True))
    return placed

  def _layout(self, tree: Any) -> tuple[list[Any], Any, list[tuple[tuple[int, ...], int | None]]]:
    """(leaves, treedef, per-leaf (full shape, dim)) of a tree structured like the placed parameters, or
    like a part of them (the same leaf paths: LoRA's merged parameters, without the adapters)."""
    leaves, treedef = jax.tree.flatten(tree)
    if self.shard_min_size == 0:
      return leaves, treedef, [(tuple(np.shape(x)), None) for x in leaves]
    if self._param_layout is None:
      raise ValueError("DataParallel: call place_state(state) before mapping a step over sharded parameters")
    known, layout = self._param_layout
    if treedef != known:
      paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      if not all(path in self._layout_by_path for path in paths):
        raise ValueError(f"DataParallel: expected a tree structured like the parameters, got {treedef}")
      layout = [self._layout_by_path[path] for path in paths]
    return leaves, treedef, layout

  # Per-device hooks the train and eval steps call, so a step does not know how parameters are laid out.
  def gather_params(self, params: Tree) -> Tree:
    """Inside a step: the full parameters from this device's shards (all_gather of the split leaves).

    Also for trees structured like the parameters (the EMA). A leaf that already has its full shape
    (replicated, or passed in whole) is returned as it is.
    """
    leaves, treedef, layout = self._layout(params)
    gathered = [
      x if d is None or tuple(x.shape) == full else lax.all_gather(x, AXIS, axis=d, tiled=True)
      for x, (full, d) in zip(leaves, layout, strict=True)
    ]
    return jax.tree.unflatten(treedef, gathered)

  def reduce_gradients(self, grads: Tree) -> Tree:
    """Inside a step: the gradient of the full parameters averaged over devices, laid out as the
    parameters are: a reduce-scatter (`psum_scatter` / N) for split leaves, a `pmean` for the others."""
    leaves, treedef, layout = self._layout(grads)
    reduced = [
      lax.pmean(g, AXIS)
      if d is None
      else lax.psum_scatter(g, AXIS, scatter_dimension=d, tiled=True) / self.num_devices
      for g, (_, d) in zip(leaves, layout, strict=True)
    ]
    return jax.tree.unflatten(treedef, reduced)

  def global_norm(self, tree: Any) -> jax.Array:
    """Inside a step: the L2 norm of a tree laid out as the parameters are (the same on every device).

    The squares of split leaves' shards are summed over devices; replicated leaves count once.
    """
    leaves, _, layout = self._layout(tree)
    split = [
      jnp.sum(jnp.square(x)) for x, (full, _) in zip(leaves, layout, strict=True) if tuple(x.shape) != full
    ]
    whole = [
      jnp.sum(jnp.square(x)) for x, (full, _) in zip(leaves, layout, strict=True) if tuple(x.shape) == full
    ]
    if not split:
      return optax.global_norm(tree)
    return jnp.sqrt(lax.psum(sum(split), AXIS) + sum(whole, jnp.zeros((), jnp.float32)))

  def shard(self, local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray | jax.Array]:
    """Places this process's part of the global batch on its devices, split along the example axis."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), local_batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), local_batch)

  def specs(self, tree: Any) -> Any:
    """Each leaf's partition spec on this mesh: from its `NamedSharding` if it has one here, else P()."""

    def spec(leaf):
      sharding = getattr(leaf, "sharding", None)
      if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
        return sharding.spec
      return P()

    return jax.tree.map(spec, tree)

  def map(
    self,
    step: Callable[..., Any],
    *,
    sharded_args: tuple[int, ...],
    donate_argnums: tuple[int, ...] = (),
    out_layouts: tuple[int | None, ...] | None = None,
  ) -> Callable:
    """Compiles a per-device `step`; args listed in `sharded_args` are split by example.

    Every other argument enters in the layout its arrays have (`place_state`'s, read from their
    shardings at each call; host arrays and other values are replicated). Outputs come back
    replicated, and must then be device-invariant (reduced with `pmean`/`psum`), except that with
    `out_layouts` (one entry per output of a step returning a tuple) output k has the layout of
    argument `out_layouts[k]`, or is replicated where the entry is None: the train step returns
    `(state, metrics)` with `out_layouts=(0, None)`. pmap mode replicates everything.
    """
    if self.mode == "pmap":
      pmapped: dict[int, Callable] = {}

      def wrapper(*args):
        if len(args) not in pmapped:
          in_axes = tuple(0 if i in sharded_args else None for i in range(len(args)))
          pmapped[len(args)] = jax.pmap(
            step, AXIS, in_axes=in_axes, out_axes=None, donate_argnums=donate_argnums, devices=self.devices
          )
        return pmapped[len(args)](*args)

      return wrapper

    cache: dict[object, jax.stages.Wrapped] = {}

    def compiled(args: tuple[Any, ...]) -> jax.stages.Wrapped:
      in_specs = tuple(P(AXIS) if i in sharded_args else self.specs(arg) for i, arg in enumerate(args))
      flat, treedef = jax.tree.flatten(in_specs, is_leaf=lambda x: isinstance(x, P))
      key = (treedef, tuple(flat))
      if key not in cache:
        out_specs = (
          P() if out_layouts is None else tuple(P() if i is None else in_specs[i] for i in out_layouts)
        )
        cache[key] = jax.jit(
          jax.shard_map(step, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False),
          donate_argnums=donate_argnums,
        )
      return cache[key]

    return _Mapped(compiled)


class _Mapped:
  """A shard_map step, compiled for each layout of its arguments (`DataParallel.map`)."""

  def __init__(self, compiled: Callable[[tuple[Any, ...]], jax.stages.Wrapped]):
    self._compiled = compiled

  def __call__(self, *args: Any) -> Any:
    return self._compiled(args)(*args)

  def lower(self, *args: Any) -> jax.stages.Lowered:
    """Ahead-of-time compilation (benchmarks)."""
    return self._compiled(args).lower(*args)


# Each of `initialize_distributed`'s arguments can come from a flag of the same name or this variable.
ENV_VARS = {
  "coordinator_address": "MMLEARN_COORDINATOR_ADDRESS",
  "num_processes": "MMLEARN_NUM_PROCESSES",
  "process_id": "MMLEARN_PROCESS_ID",
}


class DistributedSettings(TypedDict):
  """`initialize_distributed`'s arguments, None where unset."""

  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None


def distributed_settings(flag_values: DistributedSettings) -> DistributedSettings:
  """The multi-process settings from their flags, each unset one from its `$MMLEARN_*` variable."""
  address = flag_values["coordinator_address"]
  num_processes, process_id = flag_values["num_processes"], flag_values["process_id"]
  return {
    "coordinator_address": _env_text("coordinator_address") if address is None else address,
    "num_processes": _env_integer("num_processes") if num_processes is None else num_processes,
    "process_id": _env_integer("process_id") if process_id is None else process_id,
  }


def _env_text(name: str) -> str | None:
  """The `$MMLEARN_*` variable of setting `name`; None where it is unset or empty."""
  return os.environ.get(ENV_VARS[name]) or None


def _env_integer(name: str) -> int | None:
  value = _env_text(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${ENV_VARS[name]} must be an integer, got {value!r}") from None


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
