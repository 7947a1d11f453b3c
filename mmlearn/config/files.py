"""Config files outside absl: load `path[:arg]` the way `--config` does, and apply `key=value` overrides.

Scripts that train several configs (`scripts/results.py`, `scripts/sweep.py`) read the same files as
`mmlearn.main`; doing it here keeps them in step with `ml_collections.config_flags`: the text after the
first ':' goes to `get_config` as one string, and the config is locked so a misspelt key is an error.
"""

import ast
import contextlib
import importlib.util
import os
import traceback
import types
from collections.abc import Iterable
from typing import Any

import ml_collections

from mmlearn.errors import ConfigError


def split_spec(spec: str) -> tuple[str, str | None]:
  """`configs/x.py:tensor` -> ("configs/x.py", "tensor"); no ':' -> (path, None)."""
  path, colon, arg = spec.partition(":")
  return path, (arg if colon else None)


def check_exists(path: str) -> None:
  if not os.path.isfile(path):
    raise ConfigError(f"no config file {path!r}")


def error_in_file(path: str, error: BaseException) -> ConfigError | None:
  """A `ConfigError` naming `path`'s line when `error` came from code in that config file, else None.

  A config file that does not parse or whose `get_config` raises is the user's input, not mmlearn's
  code, so it gets one line (file, line, exception) instead of a traceback through mmlearn and absl.
  """
  target = os.path.realpath(path)
  if isinstance(error, SyntaxError) and error.filename and os.path.realpath(error.filename) == target:
    return ConfigError(f"{path}:{error.lineno}: SyntaxError: {error.msg}")
  frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.realpath(f.filename) == target]
  if not frames:
    return None
  return ConfigError(f"{path}:{frames[-1].lineno}: {type(error).__name__} in {frames[-1].name}: {error}")


def load_module(path: str) -> types.ModuleType:
  check_exists(path)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  assert spec is not None and spec.loader is not None  # A `.py` file: the source loader's spec.
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    if (in_file := error_in_file(path, e)) is None:
      raise
    raise in_file from e
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
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"{path} defines no get_config()")
  try:
    config = module.get_config() if arg is None else module.get_config(arg)
  except Exception as e:
    if (in_file := error_in_file(path, e)) is None:
      raise
    raise in_file from e
  config.lock()
  return config


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  config = get_config(spec)
  for override in overrides:
    key, value = parse_override(override)
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      raise ConfigError(f"bad override {override!r}: {e}") from None
  return config


def check_keys(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises ConfigError naming the first dotted key the config does not have (as `--config.KEY` would)."""
  for key in keys:
    node = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict | dict) or part not in node:
        raise ConfigError(f"unknown config key {key!r}")
      node = node[part]
