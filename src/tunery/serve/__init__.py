"""The server: OpenAI-compatible inference (and, later, the fine-tuning jobs API)."""

from .app import create_app
from .engine import Engine

__all__ = ["Engine", "create_app"]
