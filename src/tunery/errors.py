"""Errors a user can act on. The CLI prints them as one line and exits non-zero, no traceback."""


class TuneryError(Exception):
    """A problem with the user's input or environment; the message says what and where."""

    exit_code = 1


class ModelNotFound(TuneryError):
    pass


class DataError(TuneryError):
    pass


class TemplateError(TuneryError):
    pass


class ConfigError(TuneryError):
    exit_code = 2


class RegistryError(TuneryError):
    """The model registry (TUNERY_HOME/registry.db) is unreadable, busy or lacks a model."""


class RegressionError(TuneryError):
    """A retrained or re-evaluated model scored worse than allowed (a CI gate failing on purpose)."""
