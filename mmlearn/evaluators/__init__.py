"""Evaluators by name (`registry`): one module per evaluator, each registering itself on import."""

from mmlearn.evaluators import (  # noqa: F401  (register themselves)
  classification,
  coherence,
  linear_probe,
  loss,
  retrieval,
  robustness,
  samples,
  zero_shot,
)
