"""Metrics computed from a model's outputs: classification, retrieval, generation."""
