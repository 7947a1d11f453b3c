"""Config files outside absl: load `path[:arg]` the way `--config` does, and apply `key=value` overrides.

Scripts that train several configs (`scripts/results.py`, `scripts/sweep.py`) read the same files as
`mmlearn.main`; doing it here keeps them in step with `ml_collections.config_flags`: the text after the
first ':' goes to `get_config` as one string, and the config is locked so a misspelt key is an error.
"""

import ast
import contextlib
import importlib.util
import os
import types
from collections.abc import Iterable
from typing import Any

import ml_collections


def split_spec(spec: str) -> tuple[str, str | None]:
  """`configs/x.py:tensor` -> ("configs/x.py", "tensor"); no ':' -> (path, None)."""
  path, colon, arg = spec.partition(":")
  return path, (arg if colon else None)


def load_module(path: str) -> types.ModuleType:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path!r}")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_override(text: str) -> tuple[str, Any]:
  """`num_epochs=2` -> ("num_epochs", 2); a value that is not a Python literal stays a string."""
  key, _, value = text.partition("=")
  with contextlib.suppress(ValueError, SyntaxError):
    value = ast.literal_eval(value)
  return key, value


def get_config(spec: str, module: types.ModuleType | None = None) -> ml_collections.ConfigDict:
  """Calls the file's `get_config` (with the variant string, if any) and locks the result."""
  path, arg = split_spec(spec)
  module = module or load_module(path)
  config = module.get_config() if arg is None else module.get_config(arg)
  config.lock()
  return config


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  config = get_config(spec)
  for override in overrides:
    config.update_from_flattened_dict(dict([parse_override(override)]))
  return config


def check_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises KeyError naming the first dotted key the config does not have (as `--config.KEY` would)."""
  for key in keys:
    node = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict | dict) or part not in node:
        raise KeyError(f"unknown config key {key!r}")
      node = node[part]
