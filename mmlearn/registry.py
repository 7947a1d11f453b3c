"""Name -> component registries, so configs pick parts by name and trainers never grow if/elif chains."""

import importlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, cast

from mmlearn.errors import ConfigError

T = TypeVar("T")
Item = TypeVar("Item")


class Registry(Generic[T]):
  """A small mapping from names to classes or functions, filled by a decorator.

  Lookup of an unknown name raises a `ConfigError` (a `ValueError`) that names the kind of component and
  lists the known names, so a typo in a config becomes one readable `error:` line instead of a `KeyError`
  deep in a stack trace. Registering a name twice is a bug in the code, a plain `ValueError`.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def add(self, name: str, item: T) -> None:
    if name in self._items:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._items[name] = item

  def register(self, name: str) -> Callable[[Item], Item]:
    """A decorator registering what it decorates, which keeps its own type. It is not checked against `T`
    here: a registry whose items follow a contract checks them in a decorator of its own
    (`mmlearn.tasks.registry.register`)."""

    def decorator(item: Item) -> Item:
      self.add(name, cast(T, item))
      return item

    return decorator

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items


def import_modules(names: Sequence[str], *, key: str = "imports") -> None:
  """Imports the user's modules named in `config.imports`, so what they register is known by name.

  A component (dataset, encoder, fusion, task) may live outside mmlearn: its module registers it on
  import. Every entry point that looks names up (the trainer, and every tool reading a run back from its
  `config.json`) calls this first, so a run trained with an outside component reads back with it. A
  module that is not there is a `ConfigError` naming it; an error raised inside it is its own bug and
  keeps its traceback.
  """
  if isinstance(names, str):
    raise ConfigError(f"config.{key} must be a tuple of module names, got the string {names!r}")
  for name in names:
    if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
      raise ConfigError(f"config.{key}: {name!r} is not a module name (such as 'my_lab.datasets')")
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name is None or not (name == e.name or name.startswith(f"{e.name}.")):
        raise  # The module exists but imports something missing: its own error, with a traceback.
      raise ConfigError(
        f"config.{key}: cannot import {name!r} ({e}); put the directory above it on PYTHONPATH"
      ) from None
