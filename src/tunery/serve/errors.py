"""Errors in the OpenAI API's JSON shape: {"error": {"message", "type", "param", "code"}}.

HTTP_ERRORS is the one map from tunery's errors to HTTP answers: routes and the code they call
raise TuneryErrors (with `field` as the request parameter at fault) and never pick a status.
APIError is for what only HTTP knows (a missing API key, a body that is not JSON).
"""

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Busy, ModelNotFound, NotFound, RegistryError, TooLarge, TuneryError, field_of, first_error
from .engine import Cancelled

# (error class, HTTP status, error type, code); the first class the error is an instance of wins.
HTTP_ERRORS = [
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (TooLarge, 413, "invalid_request_error", "file_too_large"),
    (Busy, 429, "rate_limit_error", "too_many_tasks"),
    (RegistryError, 500, "server_error", None),
    (Cancelled, 503, "server_error", "unavailable"),
    (TuneryError, 400, "invalid_request_error", "invalid_request"),
]


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type


def error_body(message: str, type: str = "invalid_request_error", code=None, param=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_tunery(exc: TuneryError) -> APIError:
    status, type, code = next((s, t, c) for cls, s, t, c in HTTP_ERRORS if isinstance(exc, cls))
    return APIError(status, str(exc), code=code, param=exc.field, type=type)


def install(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(TuneryError)
    async def _tunery_error(request: Request, exc: TuneryError):
        return await _api_error(request, from_tunery(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        err = first_error(list(exc.errors()))
        param = field_of(err.get("loc", ())) or None
        msg = "missing required parameter" if err.get("type") == "missing" else err.get("msg", "invalid request")
        return JSONResponse(error_body(f"{param}: {msg}" if param else msg, code="invalid_request", param=param),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), code=code), status_code=exc.status_code)
