"""The real service behind the real nginx, with the repository's own site and upstream
files: streams arrive as they are produced, many at once, /metrics stays private, and an
HTTP/2 client sees no Connection header."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.service import Service, running_service
from tests.support.sse import Stream, stream_chat
from tests.support.tokens import bearer

from .tools import Nginx, running_nginx

# Limits high enough that a hundred streams from one user are never refused.
UNLIMITED = {"CHAT_RATE_LIMIT": "100000/minute", "CHAT_MAX_STREAMS_PER_USER": "1000"}
CONCURRENT_STREAMS = 100
# Fresh replies, never the cache's instant replay.
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[Service, Nginx]]:
    """The demo at its real pace: four thinking steps 0.5 s apart, then one character
    every 0.03 s, about four seconds in all."""
    with (
        running_service({"CHAT_DEMO_DELAY_SCALE": "1", **UNLIMITED}) as service,
        running_nginx(service.port) as nginx,
    ):
        yield service, nginx


def test_events_arrive_through_nginx_as_the_service_sends_them(
    paced: tuple[Service, Nginx],
) -> None:
    _, nginx = paced
    with httpx.Client(timeout=30) as client:
        stream = stream_chat(
            client, "GET", nginx.url + "/chat/hello", headers={**bearer(), **NO_CACHE}
        )
    assert stream.status == 200, stream.raw
    assert stream.names[-1] == "done"
    times = [event.at for event in stream.events]
    assert times[0] < 0.5, f"first event after {times[0]:.2f} s"
    first_content = next(e.at for e in stream.events if e.name == "content")
    # The thinking steps take 2 s; content must not arrive before them, nor all at once.
    assert first_content >= 1.5
    assert times[-1] - first_content >= 1.0, "content events spread over the reply"
    # The arrivals are spread out: many distinct 100 ms slots, not one burst at the end.
    assert len({int(t * 10) for t in times}) >= 20


def test_metrics_are_private_through_nginx(paced: tuple[Service, Nginx]) -> None:
    """The service here serves /metrics on its main port (no CHAT_METRICS_PORT), and nginx
    still refuses it: the site does not depend on the metrics port being split."""
    service, nginx = paced
    assert httpx.get(service.url + "/metrics").status_code == 200
    response = httpx.get(nginx.url + "/metrics")
    assert response.status_code == 404
    assert "chat_http_requests_total" not in response.text


def test_no_connection_header_through_nginx(paced: tuple[Service, Nginx]) -> None:
    _, nginx = paced
    headers = {**bearer(), **NO_CACHE}
    # Headers are what matter here: the first two events are enough.
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        stream = stream_chat(client, "GET", nginx.h2_url + "/chat/hi", limit=2, headers=headers)
    assert stream.status == 200 and stream.names == ["start", "thinking"]
    assert "connection" not in stream.headers
    assert "content-encoding" not in stream.headers
    # Over HTTP/1.1 the only Connection header is nginx's own for the client hop.
    with httpx.Client(timeout=30) as client:
        stream = stream_chat(
            client,
            "GET",
            nginx.url + "/chat/hi",
            limit=2,
            headers={**headers, "Accept-Encoding": "gzip"},
        )
    assert stream.headers.get_list("connection") == ["keep-alive"]
    assert "content-encoding" not in stream.headers


def test_request_id_passes_through_nginx(paced: tuple[Service, Nginx]) -> None:
    _, nginx = paced
    response = httpx.get(nginx.url + "/healthz", headers={"X-Request-ID": "through-nginx-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "through-nginx-1"


def test_a_hundred_concurrent_streams_all_finish() -> None:
    # Streams of about 0.9 s: long beside the time a hundred client threads take to start
    # (at 0.2 s a stream, a busy CI run counted 49 open at once against the 50 asked for).
    env = {"CHAT_DEMO_DELAY_SCALE": "0.2", **UNLIMITED}
    with running_service(env) as service, running_nginx(service.port) as nginx:
        limits = httpx.Limits(max_connections=CONCURRENT_STREAMS)
        with httpx.Client(timeout=60, limits=limits) as client:
            spans: list[tuple[float, float]] = []

            def one(number: int) -> Stream:
                sent = time.monotonic()
                stream = stream_chat(
                    client,
                    "GET",
                    f"{nginx.url}/chat/hello-{number}",
                    headers={**bearer(), **NO_CACHE},
                )
                if stream.events:  # from its first event to its last, on one clock
                    spans.append((sent + stream.events[0].at, sent + stream.events[-1].at))
                return stream

            with ThreadPoolExecutor(max_workers=CONCURRENT_STREAMS) as pool:
                streams = list(pool.map(one, range(CONCURRENT_STREAMS)))
    failed = [(i, s.status, s.raw[-200:]) for i, s in enumerate(streams) if s.status != 200]
    assert not failed, failed[:3]
    unfinished = [i for i, s in enumerate(streams) if not s.names or s.names[-1] != "done"]
    assert not unfinished, f"{len(unfinished)} streams did not end with `done`"
    for number, stream in enumerate(streams):
        assert f"hello-{number}" in stream.text
    # Served side by side, not one after another: at some moment most streams were open
    # at once. (Counted, not timed: a slow machine stretches every stream alike.)
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    open_now = most_at_once = 0
    for _, change in edges:
        open_now += change
        most_at_once = max(most_at_once, open_now)
    assert most_at_once >= CONCURRENT_STREAMS // 2, most_at_once
