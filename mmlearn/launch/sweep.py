"""What a sweep is: a config file's `get_sweep(h)` returns a list of override dicts, one per variant.

  def get_sweep(h):
    return h.product([h.sweep("optimizer.learning_rate", [0.03, 0.1]), h.sweep("seed", [0, 1])])

`h.sweep(key, values)` is one dict per value; `h.product` crosses sweeps (the first varies slowest),
`h.zip` pairs them element by element, `h.chain` concatenates them. Each takes sweeps as arguments or
as one list. Every variant gets a directory name made from its overrides alone, so a re-launched sweep
finds the directories of the variants it already ran.
"""

import hashlib
import itertools
import re
import types
from collections.abc import Sequence
from typing import Any

from mmlearn.config import files
from mmlearn.errors import ConfigError

Sweep = list[dict[str, Any]]
MAX_NAME = 120  # Characters of a variant's directory name (file systems allow 255 bytes).


def _sweeps(args: tuple) -> list[Sweep]:
  """Accepts `f(a, b)` and `f([a, b])`, where `a` and `b` are sweeps (lists of dicts)."""
  if len(args) == 1 and args[0] and all(isinstance(s, list | tuple) for s in args[0]):
    args = tuple(args[0])
  for s in args:
    if not isinstance(s, list | tuple) or not all(map(_is_override, s)):
      raise ConfigError(f"a sweep is a list of override dicts, got {s!r}")
  return [list(s) for s in args]


def _is_override(d: Any) -> bool:
  return isinstance(d, dict) and all(isinstance(key, str) for key in d)


def _merge(dicts: Sequence[dict[str, Any]], how: str) -> dict[str, Any]:
  merged = {}
  for d in dicts:
    if overlap := merged.keys() & d.keys():
      raise ConfigError(f"h.{how}: more than one sweep sets {sorted(overlap)}")
    merged.update(d)
  return merged


def sweep(key: str, values: Sequence[Any]) -> Sweep:
  return [{key: v} for v in values]


def product(*sweeps) -> Sweep:
  return [_merge(ds, "product") for ds in itertools.product(*_sweeps(sweeps))]


def zip_(*sweeps) -> Sweep:
  sweeps = _sweeps(sweeps)
  if len({len(s) for s in sweeps}) > 1:
    raise ConfigError(f"h.zip: the sweeps have different lengths {[len(s) for s in sweeps]}")
  return [_merge(ds, "zip") for ds in zip(*sweeps, strict=True)]


def chain(*sweeps) -> Sweep:
  return [d for s in _sweeps(sweeps) for d in s]


HELPERS = types.SimpleNamespace(sweep=sweep, product=product, zip=zip_, chain=chain)


def variant_name(overrides: dict[str, Any]) -> str:
  """`{"optimizer.learning_rate": 0.1, "seed": 1}` -> `optimizer.learning_rate=0.1,seed=1`.

  Characters other than letters, digits and `._=,+-` become `_`; a name that had to change (or be
  cut to MAX_NAME) ends with a hash of the full text, so two variants never share a directory.
  """
  text = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text)
  if name == text and len(name) <= MAX_NAME:
    return name
  digest = hashlib.sha1(text.encode()).hexdigest()[:8]
  return f"{name[: MAX_NAME - 9]}-{digest}"


def expand(module: types.ModuleType) -> dict[str, dict[str, Any]]:
  """The variants of a config module's `get_sweep`, by directory name, in the order it lists them."""
  if not callable(getattr(module, "get_sweep", None)):
    raise ConfigError(f"{module.__file__} defines no get_sweep(h) returning a list of override dicts")
  try:
    variants = module.get_sweep(HELPERS)
  except ConfigError:
    raise  # The helpers' own one-line errors (`h.zip` of unequal sweeps).
  except Exception as e:  # The sweep file's own mistake: one line naming its file and line, as get_config's.
    if module.__file__ is None or (in_file := files.error_in_file(module.__file__, e)) is None:
      raise
    raise in_file from e
  if not isinstance(variants, list | tuple) or not variants:
    raise ConfigError(f"get_sweep(h) returned {variants!r}, not a non-empty list of override dicts")
  named = {}
  for overrides in _sweeps((variants,))[0]:
    name = variant_name(overrides)
    if name in named:
      raise ConfigError(f"get_sweep(h) lists the variant {name!r} twice")
    named[name] = overrides
  return named


def parse_fixed(overrides: Sequence[str]) -> dict[str, str]:
  """`["num_epochs=1"]` -> {"num_epochs": "1"}: passed to the trainer as written, like `--config.KEY=`."""
  if bad := [o for o in overrides if "=" not in o]:
    raise ConfigError(f"an override is KEY=VALUE, got {bad[0]!r}")
  return dict(o.split("=", 1) for o in overrides)


def load(spec: str, fixed: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Expands the sweep of config file `spec` (`FILE` or `FILE:ARG`) and checks every key it sets.

  An unknown key fails here, before anything trains; a bad value fails only its own variant.
  """
  module = files.load_module(files.split_spec(spec)[0])
  variants = expand(module)
  config = files.get_config(spec, module)
  _check_keys(config, fixed, "")
  for name, overrides in variants.items():
    if clash := fixed.keys() & overrides.keys():
      raise ConfigError(f"--override sets {sorted(clash)}, which the sweep varies")
    _check_keys(config, overrides, f" in the sweep variant {name!r}")
  return variants


def _check_keys(config: Any, keys: Any, where: str) -> None:
  """`files.check_keys`, its unknown key (a `KeyError`, as `--config.KEY`'s) as a `ConfigError`."""
  try:
    files.check_keys(config, keys)
  except (KeyError, ConfigError) as e:
    raise ConfigError(f"{e.args[0]}{where}") from None
