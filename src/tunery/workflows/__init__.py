"""Workflows over recorded models, on the top floor beside the server: they train, evaluate and
read the registry, and nothing below imports them.

    lifecycle.py  retrain a recipe on a new base (or data), re-evaluate, the regression gate
    stale.py      fine-tunes whose base reference now holds different content
"""

from .lifecycle import reeval, retrain

__all__ = ["reeval", "retrain"]
