"""Evaluation: metrics, batched generation over held-out data, base vs prompt-only vs tuned."""

from .compare import compare
from .evaluator import evaluate, load_cases
from ..metrics import BUILTIN as METRICS

__all__ = ["METRICS", "compare", "evaluate", "load_cases"]
