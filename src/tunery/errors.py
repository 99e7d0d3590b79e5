"""Errors a user can act on, and the one place a validation error becomes one.

The CLI prints a TuneryError as one line and exits with its `exit_code`, no traceback; the server
answers it with the HTTP status serve/errors.py maps its class to. `field` names the input at
fault when there is one (a config field, a request parameter), dotted for nested fields. `hint`
says what to do next where there is a next step (a command to run, a package to install): the
CLI's one error handler prints it after the message, on the same line; the message (`str(exc)`)
never repeats it, and the server, whose clients run no commands, leaves it out.
"""


class TuneryError(Exception):
    """A problem with the user's input or environment; the message says what and where."""

    exit_code = 1

    def __init__(self, message: str, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.field, self.hint = field, hint

    def line(self) -> str:
        """The message, and what to do next when there is a next step: one line."""
        return f"{self}; {self.hint}" if self.hint else str(self)


class NotFound(TuneryError):
    """Something a command or request named does not exist (an uploaded file, a job)."""


class ModelNotFound(NotFound):
    pass


class DataError(TuneryError):
    pass


class TemplateError(TuneryError):
    pass


class ConfigError(TuneryError):
    """A bad recipe, option or request value."""

    exit_code = 2


class StateError(TuneryError):
    """The action does not fit the current state of what it acts on (cancel a finished job)."""


class TooLarge(TuneryError):
    """An input beyond a configured size limit (an upload)."""


class Busy(TuneryError):
    """The server has as much of this work waiting as it takes; try again later."""


class RegistryError(TuneryError):
    """The model registry (TUNERY_HOME/registry.db) is unreadable, busy or lacks a model."""


class RegressionError(TuneryError):
    """A retrained or re-evaluated model scored worse than allowed (a CI gate failing on purpose)."""


def field_of(loc) -> str:
    """A pydantic error location as a dotted field name, list items indexed (`tools[0].function.name`),
    without the union-member tags pydantic adds (`literal['auto']`, `constrained-str`) and the
    request parts FastAPI adds (`body`)."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"  # a list's item: tools[0].function.name
        elif not (p in ("body", "query", "path") or p in UNION_TAGS or any(c in p for c in "[-(")):
            out += f".{p}" if out else str(p)
    return out


# Errors of a value of the right type that is out of its bounds: for a union field (`"auto" | 1..256`)
# they say more than the other members' "should be 'auto'".
BOUND_ERRORS = ("less_than_equal", "less_than", "greater_than_equal", "greater_than", "too_long", "too_short",
                "string_pattern_mismatch", "multiple_of")


UNION_TAGS = ("str", "int", "float", "bool", "none", "dict", "list", "bytes")  # how pydantic names a union's plain members


def first_error(errs: list[dict]) -> dict:
    """The one of pydantic's errors to report: the first field's; of a union's members' complaints
    about it, a bound the value broke, when one did, else the member that read furthest into the
    value (`content[0].text` is no string, over `content` is no string)."""
    first = field_of(errs[0]["loc"])
    union = tuple(errs[0]["loc"][:-1])
    deeper = [e for e in errs if len(e["loc"]) > len(errs[0]["loc"]) and tuple(e["loc"][: len(union)]) == union
              and field_of(e["loc"]).startswith(first)]
    return next((e for e in errs if field_of(e["loc"]) == first and e["type"] in BOUND_ERRORS),
                max(deeper, key=lambda e: len(e["loc"])) if deeper else errs[0])


def config_error(exc, source: str = "") -> ConfigError:
    """The one-line error for a pydantic ValidationError: its first problem (`first_error`), naming
    the field."""
    err = first_error(exc.errors())
    field = field_of(err["loc"]) or "config"
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] == "value_error":  # our validators' own words, without pydantic's "Value error, "
        msg = str(err.get("ctx", {}).get("error") or msg.removeprefix("Value error, "))
        name = field.rsplit(".", 1)[-1]
        msg = msg[len(name) + 1:] if msg.startswith((f"{name} ", f"{name}:")) else msg  # said once, before the colon
        msg = msg.lstrip(": ") or err["msg"]
    return ConfigError(f"{source}{field}: {msg} (got {err.get('input')!r})", field=field)


def validated(model_cls, source: str = "", **values):
    """`model_cls(**values)`, a pydantic ValidationError raised as the one-line ConfigError."""
    from pydantic import ValidationError

    try:
        return model_cls(**values)
    except ValidationError as exc:
        raise config_error(exc, source) from None
