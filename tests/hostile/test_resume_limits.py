"""Resuming is bounded per user (CHAT_RESUME_RATE_LIMIT) and per stream
(CHAT_MAX_READERS_PER_STREAM), against the real service.

Before, with CHAT_RATE_LIMIT=5/minute, 30 of 30 resumes of one finished stream got 200,
each re-reading and re-sending up to CHAT_RESUME_MAX_BYTES, each holding a connection
without a stream slot.
"""

from __future__ import annotations

import time

import httpx

from tests.support.metrics import metric
from tests.support.service import running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token

LIMIT = 5


def test_resumes_are_limited_per_user_found_or_not() -> None:
    env = {"CHAT_RATE_LIMIT": "5/minute", "CHAT_RESUME_RATE_LIMIT": f"{LIMIT}/minute"}
    token = make_token(sub="rereader")
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        finished = stream_chat(http, "GET", "/chat/once", headers=bearer(token))
        stream_id = finished.headers["x-stream-id"]
        statuses = [
            http.get(f"/chat/streams/{stream_id}", headers=bearer(token)).status_code
            for _ in range(LIMIT - 1)
        ]
        # A miss spends from the same budget: probing for ids is not free either.
        missing = http.get("/chat/streams/" + "A" * 22, headers=bearer(token))
        refused = http.get(f"/chat/streams/{stream_id}", headers=bearer(token))
        by_header = http.get(
            "/chat/again", headers={**bearer(token), "Last-Event-ID": f"{stream_id}:3"}
        )
        # Another user's budget is their own.
        other = make_token(sub="someone-else")
        elsewhere = http.get(f"/chat/streams/{stream_id}", headers=bearer(other))
        assert metric(svc.url, "chat_rate_limited_total", '{limit="resume"}') == 2
    assert statuses == [200] * (LIMIT - 1)
    assert missing.status_code == 404
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["detail"] == "too many resumes"
    assert by_header.status_code == 429
    assert elsewhere.status_code == 404  # not theirs: the same 404 as ever


def test_a_stream_takes_at_most_its_readers() -> None:
    env = {"CHAT_DEMO_DELAY_SCALE": "1", "CHAT_MAX_READERS_PER_STREAM": "2"}
    token = make_token(sub="crowd")
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url, timeout=30) as http:
        with http.stream("GET", "/chat/slowly", headers=bearer(token)) as first:
            chunks = first.iter_raw()
            read_stream(first, time.monotonic(), limit=1, chunks=chunks)
            stream_id = first.headers["x-stream-id"]
            path = f"/chat/streams/{stream_id}"
            with http.stream("GET", path, headers=bearer(token)) as second:
                second_chunks = second.iter_raw()
                read_stream(second, time.monotonic(), limit=1, chunks=second_chunks)
                third = http.get(path, headers=bearer(token))
            svc.wait_for_records(
                lambda r: r.get("resumed") is True and r.get("outcome") == "disconnected"
            )
            fourth = stream_chat(http, "GET", path, headers=bearer(token), limit=2)
        assert metric(svc.url, "chat_rate_limited_total", '{limit="readers"}') == 1
    assert second.status_code == 200
    assert third.status_code == 429
    assert "Retry-After" in third.headers
    assert fourth.status == 200  # a reader left: room again
