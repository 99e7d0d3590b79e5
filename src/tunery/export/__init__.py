"""Exports: a run's weights in formats other tools load, each verified before it is handed over."""

from .exporter import FORMATS, export
from .merge import merge_run

__all__ = ["FORMATS", "export", "merge_run"]
