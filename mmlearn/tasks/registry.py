"""The task registry, and the decorator that registers a task class after checking it against the contract.

A separate module so task files can register without import cycles.
"""

from collections.abc import Callable
from typing import TypeVar

from mmlearn.registry import Registry
from mmlearn.tasks.contract import TaskFactory

TASKS: Registry[TaskFactory] = Registry("task")

TaskClass = TypeVar("TaskClass", bound=TaskFactory)


def register(name: str) -> Callable[[TaskClass], TaskClass]:
  """Registers a task class as `name`. The type checker checks the class where it is decorated: it must be
  a `TaskFactory` (its config sections, its checks, a constructor returning a `Task`)."""

  def decorator(cls: TaskClass) -> TaskClass:
    TASKS.add(name, cls)
    return cls

  return decorator
