"""Stopping a generation, and what happens when nobody comes back for it, as the upstream
sees it: a real local server speaking OpenAI's streaming format, which records when the
service closes its request. Two workers on a real Redis (a stop may land on either), and
one worker without Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Seen, running_fake_openai
from tests.support.redis import RedisServer
from tests.support.service import running_service
from tests.support.sse import read_stream
from tests.support.tokens import bearer, make_token


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as fake:
        yield fake


def _env(upstream: FakeOpenAI, store: RedisServer | None, **extra: str) -> dict[str, str]:
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_MODEL": "test-model",
        **extra,
    }
    if store is not None:
        env["CHAT_REDIS_URL"] = store.url
    return env


def _seen(upstream: FakeOpenAI, message: str) -> Seen:
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in upstream.requests if r.body["messages"][-1]["content"] == message]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the upstream never saw the request"
        time.sleep(0.02)  # another thread's list; nothing to await


def test_delete_stops_the_generation_from_either_worker_within_a_second(
    upstream: FakeOpenAI, store: RedisServer | None
) -> None:
    workers = 2 if store is not None else 1
    token = make_token(sub="stopper")
    with running_service(_env(upstream, store), workers=workers) as svc:
        pids = sorted(svc.worker_pids())
        message = f"slow {uuid.uuid4()}"
        body = {"message": message, "conversation_id": f"c-{uuid.uuid4().hex[:8]}"}
        with svc.client_of(pids[0]) as reading, svc.client_of(pids[-1]) as other:
            with reading.stream("POST", "/chat", json=body, headers=bearer(token)) as response:
                chunks = response.iter_raw()
                first = read_stream(response, time.monotonic(), limit=5, chunks=chunks)
                stream_id = response.headers["x-stream-id"]
                seen = _seen(upstream, message)
                assert not seen.disconnected.is_set()
                stopped_at = time.monotonic()
                deleted = other.delete(f"/chat/streams/{stream_id}", headers=bearer(token))
                rest = read_stream(response, time.monotonic(), chunks=chunks)
            closed = seen.disconnected.wait(5)
            closed_after = time.monotonic() - stopped_at
            history = other.get(f"/conversations/{body['conversation_id']}", headers=bearer(token))
            again = other.delete(f"/chat/streams/{stream_id}", headers=bearer(token))
            foreign = other.delete(
                f"/chat/streams/{stream_id}", headers=bearer(make_token(sub="someone"))
            )
    assert deleted.status_code == 204
    assert closed and closed_after < 1.0, closed_after
    assert rest.events[-1].name == "done"
    assert rest.events[-1].data["reason"] == "cancelled"
    # What it used before the stop (no upstream report for a cut reply: an estimate).
    assert set(rest.events[-1].data["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }
    assert rest.events[-1].data["usage"]["completion_tokens"] > 0
    partial = "".join(e.data["text"] for e in first.events + rest.events if e.name == "content")
    assert partial.startswith("tick 0 ")
    messages = history.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == partial  # the conversation keeps the partial reply
    assert again.status_code == 204  # ended already: nothing to stop, nothing to refuse
    assert foreign.status_code == 404
    assert any(
        r.get("event") == "generation finished" and r.get("outcome") == "cancelled"
        for r in svc.records()
    )


def test_nobody_coming_back_closes_the_upstream_after_the_window(
    upstream: FakeOpenAI, store: RedisServer | None
) -> None:
    window = 1.0
    env = _env(upstream, store, CHAT_RESUME_WINDOW=str(window))
    with running_service(env, workers=1) as svc:
        message = f"slow {uuid.uuid4()}"
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            with http.stream("POST", "/chat", json={"message": message}, headers=bearer()) as r:
                read_stream(r, time.monotonic(), limit=3, chunks=r.iter_raw())
            left_at = time.monotonic()
        seen = _seen(upstream, message)
        assert seen.disconnected.wait(window + 5)
        closed_after = time.monotonic() - left_at
        svc.wait_for_records(
            lambda r: r.get("event") == "generation finished" and r.get("outcome") == "disconnected"
        )
    assert window * 0.9 <= closed_after <= window + 1.0, closed_after


def test_a_reader_back_in_time_keeps_the_generation(
    upstream: FakeOpenAI, store: RedisServer | None
) -> None:
    """Coming back within the window (on the other worker, with Redis): the generation
    was never stopped, and the reply goes on."""
    window = 1.0
    workers = 2 if store is not None else 1
    env = _env(upstream, store, CHAT_RESUME_WINDOW=str(window))
    with running_service(env, workers=workers) as svc:
        pids = sorted(svc.worker_pids())
        message = f"slow {uuid.uuid4()}"
        body = {"message": message}
        with (
            svc.client_of(pids[0]) as first,
            first.stream("POST", "/chat", json=body, headers=bearer()) as r,
        ):
            part = read_stream(r, time.monotonic(), limit=3, chunks=r.iter_raw())
            stream_id = r.headers["x-stream-id"]
        with svc.client_of(pids[-1]) as other:
            headers = {**bearer(), "Last-Event-ID": part.events[-1].id}
            with other.stream("GET", f"/chat/streams/{stream_id}", headers=headers) as r:
                # Read past the window: a generation stopped for want of readers would end.
                later = read_stream(
                    r, time.monotonic(), limit=int(window / 0.05) + 20, chunks=r.iter_raw()
                )
        seen = _seen(upstream, message)
    assert later.events[0].id == f"{stream_id}:4"
    assert not [e for e in later.events if e.name in ("done", "error")]
    assert later.events[-1].at > window  # it went on past the window
    assert seen.disconnected.wait(window + 5)  # and stopped once nobody read it
