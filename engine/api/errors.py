"""Errors as OpenAI's clients expect them: `{"error": {"message", "type", "param", "code"}}` and a status.

`ApiError` is raised anywhere in a request, on either thread: inside a queued turn it travels as a
`Failed` event (it is a `KnownError`: the client's request, not Cleo, has to change).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from engine.errors import ContextFull, InternalError, KnownError, ModelFileInvalid, ModelMissing

# OpenAI's error types per status, which clients map to their exception classes.
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "timeout_error"}


class ApiError(KnownError):
    """A refused request: its HTTP status, what is wrong, and the body field it is about (`param`)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def no_model() -> ApiError:
    return ApiError(503, "No model is loaded in Cleo. Open a model in Cleo (or start `cleo serve --model PATH`) "
                         "and try again.", code="model_not_loaded", headers={"Retry-After": "5"})


def api_error_from(error: KnownError | InternalError) -> ApiError:
    """The client's view of an error that ended a turn."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ContextFull):
        return ApiError(400, error.message, param="messages", code="context_length_exceeded")
    if isinstance(error, ModelMissing | ModelFileInvalid):
        return ApiError(503, error.user_text(), code="model_not_loaded")
    if isinstance(error, KnownError):
        return ApiError(500, error.user_text(), code="generation_failed")
    return ApiError(500, "Something went wrong inside Cleo; the details are in its log.", code="internal_error")
