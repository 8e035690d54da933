"""SIGTERM to gunicorn while 50 streams are open: every stream finishes with `done` (the
graceful period is far longer than a stream), nothing is cut, and the master exits 0."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx

from tests.support.async_sse import Events, read_events
from tests.support.metrics import metric
from tests.support.service import LIMITS_OFF, Service, running_service
from tests.support.tokens import bearer, make_token

STREAMS = 50
USERS = 5


async def _open_streams(svc: Service) -> list[Events | BaseException]:
    tokens = [make_token(sub=f"term-{u}") for u in range(USERS)]
    results = [Events() for _ in range(STREAMS)]
    started = 0
    all_started = asyncio.Event()
    limits = httpx.Limits(max_connections=STREAMS + 5, max_keepalive_connections=0)

    async with httpx.AsyncClient(base_url=svc.url, timeout=30, limits=limits) as http:

        def first_event(events: Events) -> None:
            nonlocal started
            if len(events.items) == 1:
                started += 1
                if started == STREAMS:
                    all_started.set()

        async def one(i: int) -> Events:
            headers = {**bearer(tokens[i % USERS]), "X-Request-ID": f"term-{i}"}
            async with http.stream("GET", f"/chat/term-{i}", headers=headers) as response:
                assert response.status_code == 200
                return await read_events(response, results[i], on_event=first_event)

        tasks = [asyncio.create_task(one(i)) for i in range(STREAMS)]
        await asyncio.wait_for(all_started.wait(), 20)
        # Every stream has its `start` event, so every one is counted in the gauge.
        active = await asyncio.to_thread(metric, svc.url, "chat_streams_active")
        assert active == STREAMS
        svc.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def test_sigterm_with_50_open_streams_lets_every_one_finish_with_done() -> None:
    env = {
        "CHAT_DEMO_DELAY_SCALE": "0.3",  # about 1.3 s per stream
        **LIMITS_OFF,
        "CHAT_CACHE_TTL": "0",
    }
    with running_service(env, workers=2) as svc:
        results = asyncio.run(_open_streams(svc))
        exit_code = svc.proc.wait(30)
        records = svc.records()

    assert exit_code == 0
    failed = [r for r in results if isinstance(r, BaseException)]
    assert failed == []
    for i, events in enumerate(results):
        assert isinstance(events, Events)
        assert events.names[0] == "start"
        assert events.names[-1] == "done", (i, events.names[-3:])
        assert events.text.startswith(f"You said: term-{i}.")
    # Both workers were told to drain, and between them they held all 50 streams.
    draining = [r for r in records if r["event"] == "draining open streams"]
    assert len(draining) == 2
    assert sum(r["streams"] for r in draining) == STREAMS
    outcomes = {r["request_id"]: r["outcome"] for r in records if r["event"] == "stream finished"}
    assert outcomes == {f"term-{i}": "done" for i in range(STREAMS)}
    assert not any("ending open streams" in json.dumps(r) for r in records)
