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
    """A bad recipe or option value; `field` names it (dotted for nested fields)."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def config_error(exc, source: str = "") -> ConfigError:
    """The one-line error for a pydantic ValidationError: its first problem, naming the field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "config"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return ConfigError(f"{source}{field}: {msg} (got {err.get('input')!r})", field=field)


class RegistryError(TuneryError):
    """The model registry (TUNERY_HOME/registry.db) is unreadable, busy or lacks a model."""


class RegressionError(TuneryError):
    """A retrained or re-evaluated model scored worse than allowed (a CI gate failing on purpose)."""
