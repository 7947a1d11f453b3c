"""Name -> component registries, so configs pick parts by name and trainers never grow if/elif chains."""

from collections.abc import Callable
from typing import Any

from mmlearn.errors import ConfigError


class Registry:
  """A small mapping from names to classes or functions, filled by a decorator.

  Lookup of an unknown name raises a `ConfigError` (a `ValueError`) that names the kind of component and
  lists the known names, so a typo in a config becomes one readable `error:` line instead of a `KeyError`
  deep in a stack trace. Registering a name twice is a bug in the code, a plain `ValueError`.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def decorator(item: Any) -> Any:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = item
      return item

    return decorator

  def get(self, name: str) -> Any:
    if name not in self._items:
      raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
