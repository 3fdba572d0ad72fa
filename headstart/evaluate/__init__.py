"""Evaluation: metrics (pure functions) and the human report."""

from headstart.evaluate.metrics import classification_metrics

__all__ = ["classification_metrics"]
