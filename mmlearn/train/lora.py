"""LoRA (Hu et al. 2021): train low-rank adapters of chosen 2-D kernels while the base model stays frozen.

`config.lora.rank` > 0 adds, for every 2-D `kernel` whose parameter path (`mmlearn.optim.parameter_path`,
e.g. `image_encoder/encoder/layers_0/self_attn/q_proj/kernel`) matches `config.lora.targets`
(`re.search`), a pair of matrices to the train state's parameters under one top-level key:

    params["lora"] = {"<kernel path>": {"a": [in, rank], "b": [rank, out], "alpha": []}, ...}

`alpha` is the constant scale numerator (`config.lora.alpha`), kept beside the pair so the adapters say
how they merge. `a` starts Gaussian with standard deviation 1/rank and `b` at zero, so the step-0 model
is the base model exactly. The model never sees the adapters: wherever the trainer hands parameters to
the task (the step's objective, after `par.gather_params` when parameters are sharded) or to
evaluators, it hands `merged(params)`, the base parameters with `W + (alpha / rank) a @ b` and no `lora`
key. So the task and the evaluators know nothing of LoRA, and the adapters are optimised, checkpointed
and restored as ordinary parameters. With LoRA on, every parameter but the adapters' `a` and `b` is
frozen (`mmlearn.optim`'s labels, together with `optimizer.frozen`). A run read back by the tools
(`mmlearn.runs.restore`) comes back merged, so an exporter or an `init_from` of a LoRA run sees a plain
model."""

import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from mmlearn import parallel as parallel_lib
from mmlearn.errors import ConfigError
from mmlearn.optim import parameter_path
from mmlearn.tasks.contract import PyTree, Variables

KEY = "lora"  # The parameters' top-level key holding the adapters.
TRAINED = rf"{KEY}/.*/(a|b)$"  # With LoRA on, only these parameters train (`alpha` is a constant).


def check_config(config: ml_collections.ConfigDict) -> None:
  """A one-line `ConfigError` for settings that cannot run (`targets` is matched when the model is built)."""
  lora = config.lora
  if lora.rank < 0:
    raise ConfigError(f"lora.rank must be >= 0 (0: LoRA off), got {lora.rank}")
  if lora.rank == 0:
    return
  if not lora.alpha > 0:
    raise ConfigError(f"lora.alpha must be positive, got {lora.alpha}")
  if not lora.targets:
    raise ConfigError("lora.rank > 0 needs lora.targets, a regex over parameter paths (e.g. 'q_proj|v_proj')")
  _compile(lora.targets)


def _compile(pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as error:
    raise ConfigError(f"lora.targets {pattern!r} is not a regular expression: {error}") from None


def trained(config: ml_collections.ConfigDict) -> str:
  """The regex of the only parameters that train with LoRA on (`mmlearn.optim.make_optimizer`'s
  `train_only`): the adapters' `a` and `b`; "" (no restriction) with LoRA off."""
  return TRAINED if config.lora.rank > 0 else ""


def target_paths(params: PyTree, pattern: str) -> list[str]:
  """The paths of the 2-D kernels `pattern` matches; a `ConfigError` showing some paths if none."""
  regex = _compile(pattern)
  kernels = [
    parameter_path(path)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    if jnp.ndim(leaf) == 2 and parameter_path(path).rsplit("/", 1)[-1] == "kernel"
  ]
  matched = [path for path in kernels if regex.search(path)]
  if not matched:
    some = kernels[:6] or [parameter_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0][:6]]
    raise ConfigError(
      f"lora.targets {pattern!r} matches no 2-D kernel (2-D kernel paths look like {', '.join(some)})"
    )
  return matched


def _leaf(params: Mapping[str, PyTree], path: str) -> jax.Array:
  node: PyTree = params
  for name in path.split("/"):
    node = node[name]
  return node


def adapter_rng(init_rng: jax.Array) -> jax.Array:
  """The adapters' key, derived from the model's initialisation key (a stream of its own)."""
  return jax.random.fold_in(init_rng, 0x10AA)


def init_adapters(params: PyTree, config: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, PyTree]:
  """`{path: {"a": N(0, 1/rank²) [in, rank], "b": zeros [rank, out], "alpha": []}}` per targeted kernel."""
  rank = config.lora.rank
  adapters = {}
  for index, path in enumerate(target_paths(params, config.lora.targets)):
    fan_in, fan_out = _leaf(params, path).shape
    adapters[path] = {
      "a": jax.random.normal(jax.random.fold_in(rng, index), (fan_in, rank), jnp.float32) / rank,
      "b": jnp.zeros((rank, fan_out), jnp.float32),
      "alpha": jnp.float32(config.lora.alpha),
    }
  return adapters


def with_adapters(
  variables: Variables, config: ml_collections.ConfigDict, rng: jax.Array
) -> dict[str, PyTree]:
  """`variables` with fresh adapters under `params["lora"]` (unchanged when LoRA is off)."""
  variables = dict(variables)
  if config.lora.rank > 0:
    params = dict(variables["params"])
    if KEY in params:
      raise ConfigError(f"the model has a top-level parameter named {KEY!r}, which LoRA's adapters use")
    variables["params"] = {**params, KEY: init_adapters(params, config, rng)}
  return variables


def base(variables: Variables) -> dict[str, PyTree]:
  """`variables` without the adapters (the base model, unmerged): what `init_from` fills."""
  params = {k: v for k, v in variables["params"].items() if k != KEY}
  return {**variables, "params": params}


def keep_adapters(variables: Variables, params: PyTree) -> dict[str, PyTree]:
  """`variables` (a base model's, e.g. from `init_from`) with the adapters `params` holds, if any."""
  if KEY not in params:
    return dict(variables)
  return {**variables, "params": {**variables["params"], KEY: params[KEY]}}


def merged(params: PyTree) -> PyTree:
  """The base parameters with each adapted kernel replaced by `W + (alpha / rank) a @ b`, without `lora`.

  Parameters without adapters come back as they are. Differentiable: the trainer takes the gradient
  through it, with respect to `a` and `b` (`alpha` is held constant).
  """
  if not isinstance(params, Mapping) or KEY not in params:
    return params
  out = {k: v for k, v in params.items() if k != KEY}
  for path, adapter in params[KEY].items():
    a, b = adapter["a"], adapter["b"]
    kernel = _leaf(out, path)
    scale = lax.stop_gradient(jnp.asarray(adapter["alpha"], jnp.float32)) / a.shape[1]
    delta = scale * jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    out = _replaced(out, path.split("/"), (kernel + delta).astype(kernel.dtype))
  return out


def _replaced(tree: Mapping[str, PyTree], names: list[str], value: jax.Array) -> dict[str, PyTree]:
  head, rest = names[0], names[1:]
  return {**tree, head: _replaced(tree[head], rest, value) if rest else value}


def merged_variables(variables: Variables) -> dict[str, PyTree]:
  """`variables` with `merged` parameters."""
  return {**variables, "params": merged(variables["params"])}


def evaluation_merger(par: parallel_lib.DataParallel) -> Callable[[Variables], Variables]:
  """What the trainer applies to the variables it hands evaluators: `merged_variables`, computed on the
  devices with each merged kernel in the layout its base kernel has (so sharded parameters stay sharded,
  and the evaluators' `par.gather_params` finds them as it expects). Identity without adapters."""
  compiled: dict[object, Callable[[PyTree], PyTree]] = {}  # By the base parameters' layout.

  def merge(variables: Variables) -> Variables:
    params = variables["params"]
    if KEY not in params:
      return variables
    layout = jax.tree.map(
      lambda x: x.sharding if isinstance(x, jax.Array) else par.replicated,
      {k: v for k, v in params.items() if k != KEY},
    )
    key = tuple(jax.tree_util.tree_flatten_with_path(layout)[0])
    if key not in compiled:
      compiled[key] = jax.jit(merged, out_shardings=layout)
    return {**variables, "params": compiled[key](params)}

  return merge
