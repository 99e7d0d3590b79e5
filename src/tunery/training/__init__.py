"""Training: the loop, checkpoints, the run folder."""

from .loop import Run, train

__all__ = ["Run", "train"]
