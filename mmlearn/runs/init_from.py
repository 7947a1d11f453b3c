"""Start a run from another run's parameters: a pretrained encoder, or fine-tuning (`config.init_from`).

`init_from.workdir` names a trained run (any task); `init_from.params` says which of its parameters go
where, as `DEST=SOURCE` pairs of `/`-separated paths into the two parameter trees, comma-separated:
`embed/encoder=audio_encoder` starts a flow model's condition encoder from an audio classifier's encoder.
Empty copies the whole tree (the same model, fine-tuned). Every other parameter keeps this run's seeded
initialisation. A copied subtree's other collections (BatchNorm's `batch_stats`) come with it.

The source's variables are the ones it evaluates with (its best-validation state where it selects one,
its EMA where it keeps one; `mmlearn.runs.restore.load_run`). Shapes and dtypes must match leaf for leaf.

The trainer applies this to the step-0 state whether or not the run then resumes from a checkpoint
(which replaces it), so the source run must stay where it is while the run trains. `optimizer.frozen`
(`mmlearn.optim`) keeps copied parameters fixed.
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from mmlearn.errors import ConfigError
from mmlearn.runs import restore


def parse_pairs(text: str) -> list[tuple[str, str]]:
  """`"a/b=c,d=e"` -> [("a/b", "c"), ("d", "e")]; `""` -> [("", "")] (the whole tree)."""
  if not text.strip():
    return [("", "")]
  pairs = []
  for item in text.split(","):
    dest, sep, source = item.partition("=")
    if not sep or not dest.strip() or not source.strip():
      raise ConfigError(
        f"init_from.params: {item!r} is not DEST=SOURCE (parameter paths, e.g. embed/encoder=audio_encoder)"
      )
    pairs.append((dest.strip().strip("/"), source.strip().strip("/")))
  return pairs


def subtree(tree: Mapping[str, Any], path: str, what: str) -> Any:
  """The subtree at `path` ("" is the root), or a ConfigError naming the path and the names there."""
  node = tree
  for name in filter(None, path.split("/")):
    if not isinstance(node, Mapping) or name not in node:
      known = ", ".join(sorted(node)) if isinstance(node, Mapping) else "none (a leaf)"
      raise ConfigError(
        f"init_from.params: {what} has no parameter path {path!r} ({name!r}; names there: {known})"
      )
    node = node[name]
  return node


def replaced(tree: Mapping[str, Any], path: str, value: Any) -> Any:
  """A copy of `tree` with the subtree at `path` replaced by `value` (the inputs are not changed)."""
  names = [name for name in path.split("/") if name]
  if not names:
    return value
  head, rest = names[0], "/".join(names[1:])
  return {**tree, head: replaced(tree[head], rest, value)}


def check_same_layout(dest: Any, source: Any, path: str) -> None:
  dest_leaves = jax.tree_util.tree_flatten_with_path(dest)[0]
  source_leaves = jax.tree_util.tree_flatten_with_path(source)[0]
  dest_layout = {jax.tree_util.keystr(k): (x.shape, x.dtype) for k, x in dest_leaves}
  source_layout = {jax.tree_util.keystr(k): (x.shape, x.dtype) for k, x in source_leaves}
  for key in sorted(set(dest_layout) | set(source_layout)):
    mine, theirs = dest_layout.get(key), source_layout.get(key)
    if mine is None or theirs is None or mine[0] != theirs[0] or mine[1] != theirs[1]:
      raise ConfigError(
        f"init_from.params: {path or 'the whole tree'}{key} differs: this run {mine}, the source run {theirs}"
      )


def transplant(variables: Mapping[str, Any], source: Mapping[str, Any], pairs: list[tuple[str, str]]) -> dict:
  """`variables` with each DEST subtree taken from the SOURCE subtree of `source`, in every collection
  (`params` must hold both paths; another collection is copied where both runs have it)."""
  out = dict(variables)
  for dest, origin in pairs:
    value = subtree(source["params"], origin, "the source run")
    check_same_layout(subtree(out["params"], dest, "this run"), value, dest)
    out["params"] = replaced(out["params"], dest, value)
    for name, collection in variables.items():
      if name == "params" or name not in source:
        continue
      try:
        mine, theirs = subtree(collection, dest, name), subtree(source[name], origin, name)
      except ConfigError:
        continue  # The subtree has no state of this kind (a BatchNorm-free encoder).
      check_same_layout(mine, theirs, f"{name}/{dest}")
      out[name] = replaced(out[name], dest, theirs)
  return out


def load(settings: ml_collections.ConfigDict, variables: Mapping[str, Any]) -> dict:
  """`variables` with the parts `settings` (`config.init_from`) names taken from its trained run."""
  pairs = parse_pairs(settings.params)
  source_config = restore.read_config(settings.workdir)
  _, _, _, source = restore.load_run(source_config, settings.workdir, ())
  return transplant(variables, jax.device_get(source), pairs)
