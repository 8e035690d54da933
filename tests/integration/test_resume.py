"""A reply outlives its connection: drop it anywhere, come back with the last event's id,
and get every event after it exactly once, in order, with the same ids, then the live rest.

Against the real service: in worker memory (one worker), and in a real Redis with two
workers, where the resume is served by the worker that did not generate the reply.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.support.demo_text import THINKING, demo_reply
from tests.support.redis import RedisServer
from tests.support.service import Service, running_service
from tests.support.sse import Received, read_stream, stream_chat
from tests.support.tokens import bearer, make_token

MESSAGE = "come back"
DELAY = "0.1"  # 2 s of thinking and ~2.4 s of characters, scaled: 0.45 s in all


def _env(store: RedisServer | None, **extra: str) -> dict[str, str]:
    env = {"CHAT_DEMO_DELAY_SCALE": DELAY, "CHAT_CACHE_TTL": "0", **extra}
    if store is not None:
        env["CHAT_REDIS_URL"] = store.url
    return env


@dataclass
class Dropped:
    stream_id: str
    events: list[Received]


def _drop_after(
    svc: Service,
    k: int,
    token: str,
    path: str = f"/chat/{MESSAGE}",
    http: httpx.Client | None = None,
) -> Dropped:
    """Open a stream, read `k` events, and hang up."""
    with (
        contextlib.nullcontext(http) if http else httpx.Client(base_url=svc.url, timeout=30) as http
    ):
        request = http.build_request("GET", path, headers=bearer(token))
        response = http.send(request, stream=True)
        try:
            stream = read_stream(response, time.monotonic(), limit=k, chunks=response.iter_raw())
        finally:
            response.close()
    return Dropped(response.headers["x-stream-id"], stream.events[:k])


def _resume(
    svc: Service,
    stream_id: str,
    last_id: str | None,
    token: str,
    http: httpx.Client | None = None,
) -> httpx.Response:
    headers = bearer(token)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    with (
        contextlib.nullcontext(http) if http else httpx.Client(base_url=svc.url, timeout=30) as http
    ):
        return http.get(f"/chat/streams/{stream_id}", headers=headers)


def _events(response: httpx.Response) -> list[tuple[str, str, str]]:
    from tests.support.sse import parse

    return [
        (f["id"], f["event"], f["data"]) for kind, f in parse(response.content) if kind == "event"
    ]


def _check_whole(dropped: Dropped, rest: list[tuple[str, str, str]], k: int) -> None:
    """The first k events and the rest are one uninterrupted reply."""
    ids = [e.id for e in dropped.events] + [e[0] for e in rest]
    assert ids == [f"{dropped.stream_id}:{n}" for n in range(1, len(ids) + 1)]  # each once
    names = [e.name for e in dropped.events] + [e[1] for e in rest]
    assert names[0] == "start" and names[-1] == "done"
    assert names[1:5] == ["thinking"] * 4
    import json

    data = [e.data for e in dropped.events] + [json.loads(e[2]) for e in rest]
    assert [d["step"] for d in data[1:5]] == THINKING
    assert "".join(d["text"] for d, n in zip(data, names, strict=True) if n == "content") == (
        demo_reply(MESSAGE)
    )


@pytest.mark.parametrize(
    "k",
    [1, 3, 20, -2],
    ids=["after-start", "mid-thinking", "mid-content", "after-the-last-content"],
)
def test_a_dropped_stream_resumes_exactly_once_on_the_other_worker(
    store: RedisServer | None, k: int
) -> None:
    workers = 2 if store is not None else 1
    token = make_token(sub=f"resumer-{k}")
    with running_service(_env(store), workers=workers) as svc:
        pids = sorted(svc.worker_pids())
        whole = len(demo_reply(MESSAGE)) + 6  # start, 4 thinking, content..., done
        k = k if k > 0 else whole + k  # -2: all but the last content and `done`
        with svc.client_of(pids[0]) as first:
            dropped = _drop_after(svc, k, token, http=first)
        with svc.client_of(pids[-1]) as other:  # the other worker, when there is one
            resumed = _resume(svc, dropped.stream_id, dropped.events[-1].id, token, http=other)
    assert resumed.status_code == 200
    assert resumed.headers["x-stream-id"] == dropped.stream_id
    assert resumed.headers["content-type"].startswith("text/event-stream")
    _check_whole(dropped, _events(resumed), k)
    line = next(r for r in svc.records() if r.get("resumed"))
    assert line["stream"] == dropped.stream_id and line["outcome"] == "done"


def test_last_event_id_on_the_chat_route_resumes_and_spends_no_rate(
    store: RedisServer | None,
) -> None:
    """As EventSource-style clients reconnect: the same request, with a Last-Event-ID."""
    token = make_token(sub="same-request")
    with running_service(_env(store, CHAT_RATE_LIMIT="1/minute"), workers=1) as svc:
        dropped = _drop_after(svc, 7, token)
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            headers = {**bearer(token), "Last-Event-ID": dropped.events[-1].id}
            again = http.get(f"/chat/{MESSAGE}", headers=headers)
            posted = http.post(
                "/chat", json={"message": MESSAGE}, headers={**headers, "Content-Type": "x"}
            )
            fresh = http.get("/chat/something else", headers=bearer(token))
    assert again.status_code == 200
    _check_whole(dropped, _events(again), 7)
    assert posted.status_code == 200  # resumed too: no body read, no rate spent
    assert fresh.status_code == 429  # the one request of the minute was the first


def test_the_query_parameter_and_no_id_at_all(store: RedisServer | None) -> None:
    token = make_token(sub="query")
    with running_service(_env(store), workers=1) as svc:
        dropped = _drop_after(svc, 5, token)
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            by_query = http.get(
                f"/chat/streams/{dropped.stream_id}",
                params={"last_event_id": dropped.events[-1].id},
                headers=bearer(token),
            )
        from_start = _resume(svc, dropped.stream_id, None, token)
    _check_whole(dropped, _events(by_query), 5)
    whole = _events(from_start)
    assert [e[0] for e in whole][:5] == [e.id for e in dropped.events]


def test_unknown_foreign_expired_and_unretained_streams_are_the_same_404(
    store: RedisServer | None,
) -> None:
    env = _env(store, CHAT_RESUME_WINDOW="1", CHAT_RESUME_MAX_BYTES="16384")
    owner, other = make_token(sub="owner"), make_token(sub="stranger")
    with running_service(env, workers=1) as svc:
        dropped = _drop_after(svc, 3, owner)
        answers = {
            "another user's": _resume(svc, dropped.stream_id, dropped.events[-1].id, other),
            "made up": _resume(svc, "A" * 22, None, owner),
            "a malformed id": _resume(svc, dropped.stream_id, "not-an-id", owner),
            "another stream's id": _resume(svc, dropped.stream_id, "B" * 22 + ":2", owner),
        }
        # Not retained: a reply longer than the 16 KiB kept, resumed from its start.
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            long = stream_chat(
                http, "POST", "/chat", json={"message": "x" * 600}, headers=bearer(owner)
            )
        assert long.names[-1] == "done"
        answers["no longer retained"] = _resume(svc, long.headers["x-stream-id"], None, owner)
        time.sleep(1.5)  # past the window after its end: the window is what is tested
        answers["expired"] = _resume(svc, dropped.stream_id, dropped.events[-1].id, owner)
        chat_route = httpx.get(
            f"{svc.url}/chat/hi", headers={**bearer(other), "Last-Event-ID": dropped.events[-1].id}
        )
        answers["another user's, on the chat route"] = chat_route
    bodies = {name: (r.status_code, r.text) for name, r in answers.items()}
    assert set(bodies.values()) == {(404, '{"detail":"stream not found"}')}, bodies
