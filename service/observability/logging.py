"""Structured logs: one JSON object per line on stdout, for our lines and for gunicorn's and
uvicorn's, all through one structlog `ProcessorFormatter` on the root logger.

Request context (`request_id`, `user`) travels in `structlog.contextvars`, so every line
written while a request is handled carries it without passing loggers around.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
import structlog.tracebacks

# Loggers that must not keep handlers of their own: their records reach the root handler.
FOREIGN_LOGGERS = ("gunicorn.error", "uvicorn", "uvicorn.error", "service")


def _drop_color_message(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    # uvicorn attaches an ANSI-coloured copy of its message for its own console formatter.
    event.pop("color_message", None)
    return event


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _drop_color_message,
    ]


def make_handler(log_format: str = "json") -> logging.Handler:
    renderer: Any = (
        # Plain tracebacks: rich's default shows frame locals (tokens, message text).
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if log_format != "console":
        # Tracebacks as data, but never frame locals: they would carry tokens and messages.
        final.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    final.append(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
        processors=final,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.set_name("chat-service")
    return handler


def configure_logging(level: str = "info", log_format: str = "json") -> logging.Handler:
    """Route every logger in the process to one stdout handler; return that handler."""
    handler = make_handler(log_format)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers = []
        foreign.propagate = True
    # uvicorn writes its access line when a stream *starts*, without a duration; ours is
    # written when the response ends (observability/middleware.py).
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)
    return handler


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


def access_logger(
    level: str = "info", log_format: str = "json", logger_name: str = "service.access"
) -> Any:
    """The logger for the one line each request ends with (and each generation).

    It skips the stdlib `logging` machinery (a LogRecord, handler locks, the formatter's
    second processor chain): that was a tenth of a worker's time under load. Same keys,
    same stdout, one JSON object a line, rendered by orjson. Lines written through stdlib
    handlers are flushed whole after each record, so the two never interleave mid-line.
    With CHAT_LOG_FORMAT=console it is the ordinary stdlib logger.
    """
    if log_format == "console":
        return get_logger(logger_name)

    def name(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event["logger"] = logger_name
        return event

    return structlog.wrap_logger(
        structlog.BytesLogger(sys.stdout.buffer),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
