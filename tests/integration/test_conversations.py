"""Conversations against the real service, kept in worker memory and in a real Redis: the
same tests for both stores.

Regressions: a conversation deleted while a stream on it still ran came back when the
stream ended (its turn was written and claimed the id again); a turn that could not be
stored still ended in `done`; and one user could make conversations without bound.
"""

from __future__ import annotations

import threading
import time

import httpx

from tests.support.redis import RedisServer, running_redis
from tests.support.service import Service, running_service
from tests.support.sse import Stream, read_stream, stream_chat
from tests.support.tokens import bearer, make_token


def _env(store: RedisServer | None, **extra: str) -> dict[str, str]:
    env = {"CHAT_REDIS_URL": store.url} if store is not None else {}
    return {**env, **extra}


def _workers(store: RedisServer | None) -> int:
    return 2 if store is not None else 1  # without Redis, state is per worker


def _post(svc: Service, token: str, message: str, conversation: str) -> Stream:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        body = {"message": message, "conversation_id": conversation}
        return stream_chat(http, "POST", "/chat", json=body, headers=bearer(token))


def test_a_conversation_deleted_during_a_reply_stays_deleted(store: RedisServer | None) -> None:
    env = _env(store, CHAT_DEMO_DELAY_SCALE="0.5")
    token = make_token(sub="deleter")
    with running_service(env, workers=_workers(store)) as svc:
        assert _post(svc, token, "first", "doomed").names[-1] == "done"
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            body = {"message": "second", "conversation_id": "doomed"}
            with http.stream("POST", "/chat", json=body, headers=bearer(token)) as response:
                chunks = response.iter_raw()
                started = read_stream(response, time.monotonic(), limit=2, chunks=chunks)
                assert started.names == ["start", "thinking"]
                deleted = http.delete("/conversations/doomed", headers=bearer(token))
                rest = read_stream(response, time.monotonic(), chunks=chunks)
            after = http.get("/conversations/doomed", headers=bearer(token))
            listed = http.get("/conversations", headers=bearer(token)).json()
    assert deleted.status_code == 204
    assert rest.names[-1] == "done"  # the reply itself was whole
    assert after.status_code == 404
    assert listed["conversations"] == []


def test_a_conversation_deleted_and_made_anew_during_a_reply_keeps_only_the_new_turn(
    store: RedisServer | None,
) -> None:
    """Delete a conversation while a reply on it streams, make it anew under the same id
    (a new epoch), and let the old reply end: its turn must not land in the new one."""
    env = _env(store, CHAT_DEMO_DELAY_SCALE="0.5", CHAT_CACHE_TTL="0")
    token = make_token(sub="remaker")
    with running_service(env, workers=_workers(store)) as svc:
        assert _post(svc, token, "first", "again").names[-1] == "done"
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            body = {"message": "old", "conversation_id": "again"}
            with http.stream("POST", "/chat", json=body, headers=bearer(token)) as response:
                chunks = response.iter_raw()
                started = read_stream(response, time.monotonic(), limit=2, chunks=chunks)
                assert started.names == ["start", "thinking"]
                deleted = http.delete("/conversations/again", headers=bearer(token))
                made = http.post(
                    "/chat",
                    json={"message": "new", "conversation_id": "again"},
                    headers={**bearer(token), "Cache-Control": "no-cache"},
                )
                rest = read_stream(response, time.monotonic(), chunks=chunks)
            history = http.get("/conversations/again", headers=bearer(token)).json()
    assert deleted.status_code == 204
    assert made.status_code == 200 and "event: done" in made.text
    assert rest.names[-1] == "done"  # the old reply itself was whole
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["new"]


def test_a_turn_that_cannot_be_stored_ends_in_an_error_not_done() -> None:
    with running_redis() as redis:
        env = {"CHAT_REDIS_URL": redis.url, "CHAT_DEMO_DELAY_SCALE": "0.5"}
        with (
            running_service(env, workers=1) as svc,
            httpx.Client(base_url=svc.url, timeout=30) as http,
        ):
            body = {"message": "unlucky", "conversation_id": "lost"}
            with http.stream("POST", "/chat", json=body, headers=bearer()) as response:
                chunks = response.iter_raw()
                read_stream(response, time.monotonic(), limit=2, chunks=chunks)
                redis.kill()  # after the history was read, before the turn is written
                rest = read_stream(response, time.monotonic(), chunks=chunks)
    assert rest.names[-1] == "error"
    assert rest.events[-1].data["code"] == "history_unavailable"
    assert "done" not in rest.names


def test_conversations_per_user_are_bounded_and_the_oldest_go(store: RedisServer | None) -> None:
    env = _env(store, CHAT_MAX_CONVERSATIONS_PER_USER="3")
    token = make_token(sub="hoarder")
    with running_service(env, workers=_workers(store)) as svc:
        for n in range(5):
            assert _post(svc, token, f"message {n}", f"c-{n}").names[-1] == "done"
        with httpx.Client(base_url=svc.url) as http:
            listed = http.get("/conversations", headers=bearer(token)).json()
            gone = [
                http.get(f"/conversations/c-{n}", headers=bearer(token)).status_code
                for n in range(5)
            ]
    assert [c["id"] for c in listed["conversations"]] == ["c-4", "c-3", "c-2"]
    assert gone == [404, 404, 200, 200, 200]
    if store is not None:  # and nothing of the evicted ones is left in Redis
        keys = store.keys("chat:*conv*")
        assert not [k for k in keys if b"c-0" in k or b"c-1" in k]


def test_the_list_is_newest_first_titled_paged_and_private(store: RedisServer | None) -> None:
    token, other = make_token(sub="lister"), make_token(sub="someone-else")
    with running_service(_env(store), workers=_workers(store)) as svc:
        for n in range(5):
            _post(svc, token, f"  Question   number {n}\nwith a second line", f"l-{n}")
        _post(svc, token, "back to the first", "l-0")  # l-0 is now the newest
        _post(svc, other, "not yours", "l-9")
        with httpx.Client(base_url=svc.url) as http:
            first = http.get("/conversations?limit=4", headers=bearer(token)).json()
            second = http.get(
                f"/conversations?limit=4&cursor={first['next']}", headers=bearer(token)
            ).json()
            theirs = http.get("/conversations", headers=bearer(other)).json()
            refused = http.get("/conversations?cursor=%7Bbad%7D", headers=bearer(token))
    ids = [c["id"] for c in first["conversations"] + second["conversations"]]
    assert ids == ["l-0", "l-4", "l-3", "l-2", "l-1"]
    assert second["next"] is None
    newest = first["conversations"][0]
    assert newest["title"] == "Question number 0 with a second line"
    assert newest["turns"] == 2
    assert newest["updated_at"] > time.time() - 60
    assert [c["id"] for c in theirs["conversations"]] == ["l-9"]
    assert refused.status_code == 422


def test_many_streams_of_one_conversation_at_once_keep_every_turn(
    store: RedisServer | None,
) -> None:
    env = _env(store, CHAT_MAX_STREAMS_PER_USER="10", CHAT_HISTORY_TURNS="10")
    token = make_token(sub="busy")
    with running_service(env, workers=_workers(store)) as svc:
        threads = [
            threading.Thread(target=_post, args=(svc, token, f"parallel {n}", "shared"))
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        with httpx.Client(base_url=svc.url) as http:
            history = http.get("/conversations/shared", headers=bearer(token)).json()
    users = sorted(m["content"] for m in history["messages"] if m["role"] == "user")
    assert users == [f"parallel {n}" for n in range(4)]


def test_a_conversation_left_alone_expires_after_the_history_ttl(
    store: RedisServer | None,
) -> None:
    token = make_token(sub="forgetful")
    with running_service(_env(store, CHAT_HISTORY_TTL="1"), workers=_workers(store)) as svc:
        assert _post(svc, token, "remember me", "brief").names[-1] == "done"
        with httpx.Client(base_url=svc.url) as http:
            assert http.get("/conversations/brief", headers=bearer(token)).status_code == 200
            if store is not None:  # every key it made carries the TTL
                direct = store.client()
                keys = store.keys("chat:*conv*")
                assert len(keys) >= 3
                assert all(0 < direct.pttl(key) <= 1000 for key in keys)
            time.sleep(1.2)  # the store's own clock is what is under test
            assert http.get("/conversations/brief", headers=bearer(token)).status_code == 404
            assert http.get("/conversations", headers=bearer(token)).json()["conversations"] == []
