"""Tasks bundle a model, its loss and its evaluation sums, so one training loop serves them all."""

from mmlearn.tasks import classification  # noqa: F401  (registers itself)
from mmlearn.tasks.registry import TASKS

__all__ = ["TASKS"]
