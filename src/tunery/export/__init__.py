"""Exports: a standalone merged model (more formats come later)."""

from .merge import merge_run

__all__ = ["merge_run"]
