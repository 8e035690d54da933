"""The one error shape: JSON `{"detail": ...}` with the right status, never a traceback.

    ServiceError             500, the base; `detail` is safe to show
    ├── Unauthorized         401, adds `WWW-Authenticate: Bearer` (RFC 6750 §3)
    ├── NotFoundError        404
    ├── PayloadTooLarge      413
    ├── UnsupportedMediaType 415
    ├── InvalidInput         422
    ├── TooManyRequests      429, adds `Retry-After` in whole seconds
    ├── Unavailable          503, a dependency is down and we cannot fail open
    ├── UpstreamFailed       502/503/504 with a stable `code`: the model refused or is away
    ├── ClientGone           499, for the access line: the client left before the answer
    └── OpenAIError          any status, already in OpenAI's terms (type, code, param)

On OpenAI's surface (`/v1/...`) every error is OpenAI's shape instead, `{"error":
{"message", "type", "param", "code"}}`, with the statuses its SDKs map to their exception
classes: 400 where /chat says 422 (or 415), 401, 404, 413, 429, 503.

`install(app)` maps these, FastAPI's validation errors, Starlette's HTTP errors (404,
405) and a client that left mid-body (Starlette's `ClientDisconnect`, as ClientGone) onto
that shape in one place.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect


class ServiceError(Exception):
    status = 500

    def __init__(self, detail: Any = "internal error", headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class Unauthorized(ServiceError):
    status = 401

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        # Without credentials RFC 6750 §3.1 says not to name an error code.
        challenge = 'Bearer realm="chat-service"'
        if error:
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(detail, {"WWW-Authenticate": challenge})


class NotFoundError(ServiceError):
    status = 404


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class InvalidInput(ServiceError):
    status = 422


class TooManyRequests(ServiceError):
    status = 429

    def __init__(self, detail: str, retry_after: float, headers: dict[str, str] | None = None):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, {**(headers or {}), "Retry-After": str(seconds)})

    def with_headers(self, headers: dict[str, str]) -> TooManyRequests:
        """The same refusal with `headers` beside its own (its own win)."""
        self.headers = {**headers, **self.headers}
        return self


class Unavailable(ServiceError):
    status = 503


class ClientGone(ServiceError):
    """The client left before the response began (nginx's 499); nobody reads the answer."""

    status = 499


class UpstreamFailed(ServiceError):
    """The backend refused before the stream began: 502, 503 or 504 with a stable `code`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class OpenAIError(ServiceError):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.kind = kind


OPENAI_PREFIX = "/v1/"
# How /chat's statuses read on OpenAI's surface: (status, type, code).
OPENAI_TERMS = {
    401: (401, "invalid_request_error", "invalid_api_key"),
    404: (404, "invalid_request_error", "not_found"),
    413: (413, "invalid_request_error", "request_too_large"),
    415: (400, "invalid_request_error", "unsupported_media_type"),
    422: (400, "invalid_request_error", "invalid_value"),
    499: (499, "invalid_request_error", "client_closed_request"),
}


def openai_body(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, detail: Any, headers: dict[str, str] | None = None, path: str = ""
) -> JSONResponse:
    """The one error shape: `{"detail": ...}`, or OpenAI's on its surface (`path`)."""
    if not path.startswith(OPENAI_PREFIX):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    message = detail if isinstance(detail, str) else _message_of(detail)
    if status == 429:
        kind = "tokens" if message.startswith("token budget") else "requests"
        terms = (429, kind, "rate_limit_exceeded")
    else:
        terms = OPENAI_TERMS.get(status, (status, "server_error", "service_unavailable"))
    status, kind, code = terms
    return JSONResponse(openai_body(message, kind, code), status_code=status, headers=headers)


def _message_of(detail: Any) -> str:
    """A validation error list as one line: `body.messages: field required`."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(detail)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    path = request.url.path
    if isinstance(exc, OpenAIError):
        body = openai_body(str(exc.detail), exc.kind, exc.code, exc.param)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)
    if isinstance(exc, UpstreamFailed):
        if path.startswith(OPENAI_PREFIX):
            body = openai_body(str(exc.detail), "server_error", exc.code)
        else:
            body = {"detail": exc.detail, "code": exc.code}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)
    return error_response(exc.status, exc.detail, exc.headers, path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI echoes the offending input; a 4,000-character message does not belong in an
    # error body (or in a log line that quotes it), so keep location, message and type only.
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()
    ]
    return error_response(422, detail, None, request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, exc.detail, dict(exc.headers or {}), request.url.path)


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The client went away while its body was being read: an ordinary disconnect, logged
    # with its outcome by the access line, never an unhandled error. Nobody reads this.
    return error_response(
        ClientGone.status, "the client closed the request", None, request.url.path
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette still re-raises after sending this, and RequestContext logs it once.
    return error_response(500, "internal error", None, request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
