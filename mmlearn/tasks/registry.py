"""The task registry; a separate module so task files can register without import cycles."""

from mmlearn.registry import Registry

TASKS = Registry("task")
