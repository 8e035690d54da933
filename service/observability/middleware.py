"""The outermost middleware (pure ASGI, so streams pass through unbuffered and cancellable):
request id, `Server-Timing`, one access line and the HTTP metrics per request.

The access line is written when the response *ends*, so for a stream it carries the whole
duration and the stream's summary (outcome, events, bytes, ttft_ms, cache, message_chars).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import Message, Receive, Scope, Send

from ..errors import ClientGone, error_response
from ..record import RequestRecord
from . import metrics
from .logging import access_logger

REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if REQUEST_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: Any, log: Any = None) -> None:
        self.app = app
        self.log = log if log is not None else access_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        # Streams write body chunks to uvicorn's send directly; every wrapper in between only
        # watches `http.response.start`, which still passes through all of them.
        record = RequestRecord(started, send)
        scope.setdefault("state", {})["record"] = record
        timing = record.timing
        structlog.contextvars.bind_contextvars(request_id=request_id)
        response: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["started"] = True
                first_byte_ms = (time.perf_counter() - started) * 1000
                server_timing = (
                    f"auth;dur={timing.auth:.2f}, limits;dur={timing.limits:.2f}, "
                    f"cache;dur={timing.cache:.2f}, total;dur={first_byte_ms:.2f}"
                )
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("ascii")),
                    (b"server-timing", server_timing.encode("ascii")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
            if record.body is not None:
                # An event stream: its body runs here, where the app's frames (its
                # middleware, router and dependencies) no longer hold memory for its
                # whole life.
                await record.body(receive)
        except Exception:
            self.log.exception("unhandled error")
            if not response["started"]:
                failure = error_response(500, "internal error", None, scope["path"])
                await failure(scope, _disconnected, send_with_headers)
        finally:
            self._finish(scope, record, response["status"])
            structlog.contextvars.clear_contextvars()

    def _finish(self, scope: Scope, record: RequestRecord, status: int) -> None:
        started = record.started
        duration = time.perf_counter() - started
        route = scope.get("route")
        # The template without convertors ("/chat/{message}"), as OpenAPI spells it.
        template = getattr(route, "path_format", None) or "unmatched"
        method = scope["method"]
        metrics.http_requests.labels(method, template, str(status)).inc()
        metrics.http_duration.labels(method, template).observe(duration)
        fields: dict[str, Any] = {
            "user": record.user,
            "method": method,
            "route": template,
            "status": status,
            "duration_ms": round(duration * 1000, 2),
        }
        stream = record.stream
        if status == ClientGone.status:
            fields["outcome"] = "disconnected"  # gone before the answer began
        if stream is not None:
            ttft = stream.first_content_at
            fields.update(
                outcome=stream.outcome,
                events=stream.events,
                bytes=stream.bytes,
                ttft_ms=round((ttft - started) * 1000, 2) if ttft is not None else None,
                cache=record.cache or "MISS",
                message_chars=record.message_chars,
                stream=record.stream_id,
            )
            if record.resumed:
                fields["resumed"] = True
            usage = record.usage
            if usage is not None:
                fields.update(
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
                )
        log = self.log.error if status >= 500 else self.log.info
        log("stream finished" if stream else "request", **fields)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}
