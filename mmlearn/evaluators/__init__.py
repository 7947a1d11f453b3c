"""Evaluators by name: the registry and one module per evaluator."""
