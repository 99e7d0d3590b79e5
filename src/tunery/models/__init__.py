"""Resolving a model reference to a local safetensors folder, and loading it."""

from .load import load_model, load_tokenizer
from .resolve import DEFAULT_ALIASES, ResolvedModel, resolve_model

__all__ = ["DEFAULT_ALIASES", "ResolvedModel", "load_model", "load_tokenizer", "resolve_model"]
