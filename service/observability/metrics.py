"""Prometheus metrics. Names are fixed by the contract (dashboards depend on them).

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set before any worker imports prometheus_client,
so every worker writes its values to files there and `/metrics` sums them (`collect()`).
Hot paths stay cheap: per-event counts are accumulated on the stream and added once when it
ends, because each multiprocess update is a write to a memory-mapped file.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.concurrency import run_in_threadpool

from .. import __version__

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Every update asks getpid() to notice a fork since the last one; this module is
    # imported in each worker after its fork and nothing forks later, so the pid is fixed.
    # (It was 6% of a worker's time under load.)
    _PID = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _PID)  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STREAM_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

http_requests = Counter(
    "chat_http_requests",
    "HTTP requests by route template and status.",
    ["method", "route", "status"],
)
http_duration = Histogram(
    "chat_http_request_duration_seconds",
    "Time to the end of the response (whole stream for SSE).",
    ["method", "route"],
    buckets=STREAM_BUCKETS,
)
streams_active = Gauge(
    "chat_streams_active", "Event streams open right now.", multiprocess_mode="livesum"
)
generations_active = Gauge(
    "chat_generations_active",
    "Replies being generated right now, read or not.",
    multiprocess_mode="livesum",
)
stream_resumes = Counter(
    "chat_stream_resumes", "Requests to resume a stream, by result.", ["result"]
)
stream_duration = Histogram(
    "chat_stream_duration_seconds",
    "Stream duration by outcome.",
    ["outcome"],
    buckets=STREAM_BUCKETS,
)
time_to_first_token = Histogram(
    "chat_time_to_first_token_seconds",
    "From request start to the first content event.",
    buckets=LATENCY_BUCKETS,
)
stream_events = Counter("chat_stream_events", "SSE events sent, by event name.", ["event"])
rate_limited = Counter("chat_rate_limited", "Requests refused by a limit.", ["limit"])
cache_requests = Counter("chat_cache_requests", "Response cache look-ups.", ["result"])
auth_failures = Counter("chat_auth_failures", "Refused bearer tokens, by reason.", ["reason"])
backend_streams = Counter(
    "chat_backend_streams", "Generations started on the backend (cache hits excluded).", ["backend"]
)
backend_errors = Counter("chat_backend_errors", "Backend failures, by kind.", ["kind"])
connections_refused = Counter(
    "chat_connections_refused",
    "Connections closed by a bound: header_timeout, body_timeout, header_size, "
    "max_connections, max_connections_per_address.",
    ["reason"],
)
tokens = Counter(
    "chat_tokens",
    "Tokens used by generations (the upstream's count, or an estimate), by kind.",
    ["kind"],
)
redis_errors = Counter("chat_redis_errors", "Failed Redis operations, by operation.", ["op"])
# The label values each metric can take, made present (at 0) when a worker starts: a
# dashboard then sees "none yet" as 0 rather than as no data, and a test can tell a count
# of nothing from a metric that is not there.
KNOWN_LABELS: dict[Counter | Histogram, tuple[str, ...]] = {
    rate_limited: ("rate", "streams", "ip", "tokens", "resume", "readers"),
    tokens: ("prompt", "completion"),
    cache_requests: ("hit", "miss"),
    auth_failures: (
        "missing",
        "malformed",
        "oversized",
        "algorithm",
        "signature",
        "expired",
        "not_yet_valid",
        "no_sub",
        "audience",
        "issuer",
        "unknown_key",
        "keys_unavailable",
    ),
    backend_streams: ("demo", "openai"),
    backend_errors: (
        "upstream_error",
        "upstream_refused",
        "upstream_rate_limited",
        "upstream_unavailable",
        "upstream_timeout",
        "upstream_interrupted",
    ),
    redis_errors: (
        "rate_limit",
        "stream_slot",
        "cache_get",
        "cache_put",
        "cache_lock",
        "history",
        "budget",
        "ping",
        "probe",
    ),
    stream_events: ("start", "thinking", "content", "done", "error"),
    stream_resumes: ("resumed", "not_found"),
    stream_duration: ("done", "disconnected", "error", "shutdown"),
    connections_refused: (
        "header_timeout",
        "body_timeout",
        "header_size",
        "max_connections",
        "max_connections_per_address",
    ),
}
for _metric, _values in KNOWN_LABELS.items():
    for _value in _values:
        _metric.labels(_value)

build_info = Gauge(
    "chat_build_info", "Always 1; the version is a label.", ["version"], multiprocess_mode="max"
)
build_info.labels(version=__version__).set(1)


def collect() -> bytes:
    """Prometheus text for this process, or summed over all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


class SharedCollection:
    """Scrapes that arrive while a collection runs share its result: collecting reads every
    worker's files, so a flood of scrapes costs one collection at a time, not one each."""

    def __init__(self) -> None:
        self._running: asyncio.Future[bytes] | None = None

    async def collect(self) -> bytes:
        if self._running is None:
            # Multiprocess collection reads files: keep that off the event loop.
            self._running = asyncio.ensure_future(run_in_threadpool(collect))
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, _: asyncio.Future[bytes]) -> None:
        self._running = None
