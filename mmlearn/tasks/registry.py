"""The task registry, and the decorator that registers a task class after checking it against the contract.

A separate module so task files can register without import cycles.
"""

from collections.abc import Callable
from typing import TypeVar

from mmlearn.registry import Registry
from mmlearn.tasks.contract import RegisteredTask, TaskFactory

TASKS: Registry[TaskFactory] = Registry("task")

TaskT = TypeVar("TaskT", bound=RegisteredTask)


def register(name: str) -> Callable[[type[TaskT]], type[TaskT]]:
  """Registers a task class as `name`. The type checker checks the class where it is decorated: it must be
  a `TaskFactory` (its config sections, its checks, a constructor returning a `Task`), which it checks
  as `type[RegisteredTask]` (the constructor's signature, every `Task` member, the static methods)."""

  def decorator(cls: type[TaskT]) -> type[TaskT]:
    TASKS.add(name, cls)
    return cls

  return decorator
