"""The app built in process and called through httpx's ASGITransport: branches that a
real server reaches only at awkward moments (the drain, a dependency down), and the
branches of the chat path: cache, limits, conversations, upstream refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from service.cache import cache_key
from service.services import Services
from tests.support.demo_text import demo_reply
from tests.support.in_process import running_app
from tests.support.sse import parse
from tests.support.tokens import bearer, make_token

Scenario = Callable[[httpx.AsyncClient, Services], Awaitable[Any]]


def run(scenario: Scenario, **settings: object) -> Any:
    async def main() -> Any:
        async with running_app(**settings) as (client, services):
            return await scenario(client, services)

    return asyncio.run(main())


def events(response: httpx.Response) -> list[tuple[str, str, str]]:
    """(id, name, data) of each event of a finished stream."""
    return [
        (fields["id"], fields["event"], fields["data"])
        for kind, fields in parse(response.content)
        if kind == "event"
    ]


def test_readyz_says_503_while_draining() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> tuple[int, int, str]:
        before = (await client.get("/readyz")).status_code
        services.drain.begin()  # as the worker's SIGTERM handler does
        await asyncio.sleep(0)  # `begin` only schedules: let the loop start the drain
        during = await client.get("/readyz")
        return before, during.status_code, during.json()["detail"]

    assert run(scenario) == (200, 503, "shutting down")


def test_a_miss_is_stored_then_replayed_and_the_generation_is_forgotten() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        miss = await client.get("/chat/remember me", headers=bearer())
        stored = await services.cache.get(cache_key("demo", "demo", "remember me"))
        hit = await client.get("/chat/remember me", headers=bearer())
        bypass = await client.get(
            "/chat/remember me", headers={**bearer(), "Cache-Control": "no-cache"}
        )
        return miss, stored, hit, bypass, services.generations.all()

    # The key below is the shared one (CHAT_CACHE_SCOPE=global; the default is per user).
    miss, stored, hit, bypass, left = run(scenario, resume_window=0, cache_scope="global")
    assert [r.headers["x-cache"] for r in (miss, hit, bypass)] == ["MISS", "HIT", "MISS"]
    assert stored is not None and stored[-1].name == "done"
    # The same events; each stream has ids of its own, and the replay used no tokens.
    assert [e[1:] for e in events(hit)[1:-1]] == [e[1:] for e in events(miss)[1:-1]]
    assert events(miss)[-1][2].startswith('{"reason":"complete","usage":{"prompt_tokens":11,')
    assert events(hit)[-1][2] == (
        '{"reason":"complete","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}'
    )
    texts = ["".join(e[2][9:-2] for e in events(r) if e[1] == "content") for r in (miss, hit)]
    assert texts[0] == texts[1] == demo_reply("remember me")
    sid = miss.headers["x-stream-id"]
    assert [e[0] for e in events(miss)] == [f"{sid}:{n}" for n in range(1, len(events(miss)) + 1)]
    assert left == []  # ended and forgotten (CHAT_RESUME_WINDOW=0)


def test_with_a_conversation_the_cache_is_off() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        body = {"message": "private", "conversation_id": "c1"}
        response = await client.post("/chat", json=body, headers=bearer())
        stored = await services.cache.get(cache_key("demo", "demo", "private"))
        return response, stored

    response, stored = run(scenario, cache_scope="global")
    assert response.headers["x-cache"] == "MISS"
    assert events(response)[-1][1] == "done"
    assert stored is None


def test_a_request_over_its_rate_holds_nothing() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        first = await client.get("/chat/one", headers=bearer())
        second = await client.get("/chat/two", headers=bearer())
        probe = await services.slots.acquire("alice")  # a slot is free: nothing leaked
        return first.status_code, second, probe

    first, second, probe = run(scenario, rate_limit="1/minute", max_streams_per_user=1)
    assert first == 200
    assert second.status_code == 429 and second.json()["detail"] == "rate limit reached"
    assert int(second.headers["retry-after"]) >= 1
    assert probe is not None


def test_the_open_stream_cap_refuses_with_429() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        for _ in range(2):  # two streams of bob's are open elsewhere
            assert await services.slots.acquire("bob") is not None
        return await client.get("/chat/third", headers=bearer(make_token(sub="bob")))

    refused = run(scenario, max_streams_per_user=2)
    assert refused.status_code == 429
    assert refused.json()["detail"] == "too many open streams"


def test_another_users_conversation_is_404_and_hands_back_the_slot() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        body = {"message": "mine", "conversation_id": "taken"}
        await client.post("/chat", json=body, headers=bearer(make_token(sub="owner")))
        intruder = bearer(make_token(sub="intruder"))
        refused = await client.post("/chat", json=body, headers=intruder)
        again = await client.get("/chat/still allowed", headers=intruder)
        return refused, again.status_code

    refused, again = run(scenario, max_streams_per_user=1)
    assert refused.status_code == 404
    assert again == 200  # the refused request's slot came back


def test_an_upstream_refusal_is_json_with_its_code_and_holds_nothing() -> None:
    async def scenario(client: httpx.AsyncClient, services: Services) -> Any:
        refused = await client.get("/chat/anyone", headers=bearer())
        return refused, await services.slots.acquire("alice"), services.generations.all()

    refused, slot, running = run(
        scenario,
        backend="openai",
        openai_base_url="http://127.0.0.1:9/v1",
        openai_model="m",
        openai_retries=0,
        max_streams_per_user=1,
    )
    assert refused.status_code == 503
    assert refused.json() == {"detail": "the model is unreachable", "code": "upstream_unavailable"}
    assert slot is not None and running == []
