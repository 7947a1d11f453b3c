"""Tasks bundle a model, its loss and its evaluator, so one training loop serves them all."""

from mmlearn.tasks import classification, flow, mvae, retrieval  # noqa: F401  (register themselves)
from mmlearn.tasks.registry import TASKS

__all__ = ["TASKS"]
