"""A /v1 stream outlives its connection as a /chat one does: cut after a few chunks and
resumed with `Last-Event-ID` on the same route, it yields the whole reply once, in the same
chunks with the same ids; on the worker that did not generate it (through Redis), and
through the project's nginx; and `DELETE /chat/streams/{id}` stops it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.tools import running_nginx
from tests.support.demo_text import demo_reply
from tests.support.redis import RedisServer, running_redis
from tests.support.service import LIMITS_OFF, Service, running_service
from tests.support.sse import parse
from tests.support.tokens import make_token

MESSAGE = "resume me"
BODY = {"model": "demo", "messages": [{"role": "user", "content": MESSAGE}], "stream": True}
ENV = {**LIMITS_OFF, "CHAT_DEMO_DELAY_SCALE": "0.1", "CHAT_CACHE_TTL": "0"}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _blocks(raw: bytes) -> list[tuple[str, str]]:
    """(id, data) of every block."""
    return [(f.get("id", ""), f["data"]) for kind, f in parse(raw) if kind == "event"]


def _drop_after(http: httpx.Client, url: str, token: str, k: int) -> tuple[str, bytes]:
    """POST a streamed completion, read `k` blocks, hang up."""
    request = http.build_request(
        "POST", url, json=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    response = http.send(request, stream=True)
    raw = b""
    try:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            raw += chunk
            if raw.count(b"\n\n") >= k:
                break
    finally:
        response.close()
    kept = b"\n\n".join(raw.split(b"\n\n")[:k]) + b"\n\n"
    return response.headers["x-stream-id"], kept


def _resume(http: httpx.Client, url: str, token: str, last: str) -> bytes:
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": last}
    response = http.post(url, json=BODY, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.content


def _check_whole(stream_id: str, first: bytes, rest: bytes) -> None:
    blocks = _blocks(first) + _blocks(rest)
    ids = [block_id for block_id, _ in blocks]
    numbers = [int(i.rpartition(":")[2]) for i in ids]
    assert all(i.startswith(stream_id + ":") for i in ids)
    assert numbers == sorted(numbers)  # in order; the end's chunks share its number
    datas = [data for _, data in blocks]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert len({c["id"] for c in chunks}) == 1  # one chatcmpl id, across the cut
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == demo_reply(MESSAGE)  # every chunk once
    assert len(numbers) == len(set(numbers)) + 1  # only the finish and [DONE] share one


@pytest.mark.parametrize("k", [3, 30])
def test_a_cut_stream_resumes_on_the_other_worker_once(redis: RedisServer, k: int) -> None:
    token = make_token(sub=f"v1-resumer-{k}")
    with running_service({**ENV, "CHAT_REDIS_URL": redis.url}, workers=2) as svc:
        first_worker, second_worker = sorted(svc.worker_pids())
        url = "/v1/chat/completions"
        with svc.client_of(first_worker) as http:
            stream_id, first = _drop_after(http, url, token, k)
        last = _blocks(first)[-1][0]
        with svc.client_of(second_worker) as http:
            rest = _resume(http, url, token, last)
    _check_whole(stream_id, first, rest)


def test_a_cut_stream_resumes_through_nginx() -> None:
    token = make_token(sub="v1-nginx")
    with running_service(ENV, workers=1) as svc, running_nginx(svc.port) as nginx:
        url = nginx.url + "/v1/chat/completions"
        with httpx.Client(timeout=30) as http:
            stream_id, first = _drop_after(http, url, token, 5)
            rest = _resume(http, url, token, _blocks(first)[-1][0])
    _check_whole(stream_id, first, rest)


def test_a_v1_stream_is_stopped_by_delete(svc_paced: Service) -> None:
    token = make_token(sub="v1-stopper")
    with httpx.Client(base_url=svc_paced.url, timeout=30) as http:
        request = http.build_request(
            "POST", "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        response = http.send(request, stream=True)
        raw = b""
        stopped = None
        for chunk in response.iter_raw():
            raw += chunk
            if stopped is None and raw.count(b"\n\n") >= 2:
                stream_id = response.headers["x-stream-id"]
                started = time.monotonic()
                stopped = http.delete(
                    f"/chat/streams/{stream_id}", headers={"Authorization": f"Bearer {token}"}
                )
        took = time.monotonic() - started
        response.close()
    assert stopped is not None and stopped.status_code == 204
    datas = [data for _, data in _blocks(raw)]
    assert datas[-1] == "[DONE]"
    finish = json.loads(datas[-2])["choices"][0]
    assert finish["finish_reason"] == "stop"
    assert len(raw) < 4000  # stopped early: far short of the whole reply
    assert took < 1.5


@pytest.fixture
def svc_paced() -> Iterator[Service]:
    with running_service({**LIMITS_OFF, "CHAT_DEMO_DELAY_SCALE": "1"}, workers=1) as svc:
        yield svc


def test_a_chat_stream_is_not_resumed_on_v1(svc_paced: Service) -> None:
    """A resume answers in the stream's own format: another surface's stream is a 404."""
    token = make_token(sub="v1-crossing")
    with httpx.Client(base_url=svc_paced.url, timeout=30) as http:
        request = http.build_request(
            "GET", "/chat/crossing", headers={"Authorization": f"Bearer {token}"}
        )
        response = http.send(request, stream=True)
        first = next(response.iter_raw())
        response.close()
        last = _blocks(first)[0][0]
        crossing = http.post(
            "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": last},
        )
    assert crossing.status_code == 404
    assert crossing.json()["error"]["type"] == "invalid_request_error"
