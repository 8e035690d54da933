"""The `openai` backend end to end: the real service streaming from a real local server
that speaks the OpenAI format, and per-user conversations carried upstream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_openai import LEAK, FakeOpenAI, running_fake_openai
from tests.support.metrics import metric
from tests.support.service import Service, running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token

API_KEY = "sk-test-key-never-logged-5521"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as fake:
        yield fake


@pytest.fixture(scope="module")
def svc(upstream: FakeOpenAI) -> Iterator[Service]:
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_API_KEY": API_KEY,
        "CHAT_OPENAI_MODEL": "test-model",
        "CHAT_OPENAI_IDLE_TIMEOUT": "1",
        "CHAT_RATE_LIMIT": "100000/minute",
        "CHAT_MAX_STREAMS_PER_USER": "100",
        # A client that leaves cancels its generation at once (resume has tests of its own).
        "CHAT_RESUME_WINDOW": "0",
    }
    with running_service(env, workers=2) as service:
        yield service


@pytest.fixture
def http(svc: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.url, timeout=30) as client:
        yield client


def _post(http: httpx.Client, message: str, token: str | None = None, **body: object):  # type: ignore[no-untyped-def]
    return stream_chat(
        http, "POST", "/chat", json={"message": message, **body}, headers=bearer(token)
    )


def test_content_reasoning_and_usage_become_our_events(
    http: httpx.Client, upstream: FakeOpenAI
) -> None:
    stream = _post(http, f"normal {uuid.uuid4()}")

    assert stream.status == 200
    assert stream.names[0] == "start"
    thinking = [e.data["step"] for e in stream.events if e.name == "thinking"]
    assert thinking == ["First I read the question.", "Then I answer."]
    assert stream.text == "Hello from the model (0 earlier)"
    done = stream.events[-1]
    assert done.name == "done"
    assert done.data["reason"] == "stop"
    assert done.data["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    sent = upstream.requests[-1]
    assert sent.body["stream"] is True and sent.body["model"] == "test-model"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


def test_the_reasoning_field_is_read_too(http: httpx.Client) -> None:
    stream = _post(http, f"reasoning-field {uuid.uuid4()}")

    assert [e.name for e in stream.events].count("thinking") == 2


@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        ("status-500", 502, "upstream_error"),
        ("status-401", 502, "upstream_refused"),
        ("status-429", 503, "upstream_rate_limited"),
        ("status-503", 503, "upstream_unavailable"),
    ],
)
def test_a_refusal_before_the_first_token_is_a_clean_json_error(
    http: httpx.Client, svc: Service, scenario: str, status: int, code: str
) -> None:
    response = http.post("/chat", json={"message": f"{scenario} {uuid.uuid4()}"}, headers=bearer())

    assert response.status_code == status
    assert response.json()["code"] == code
    assert LEAK not in response.text and API_KEY not in response.text
    assert "Traceback" not in response.text


def test_an_unreachable_upstream_is_503() -> None:
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "CHAT_OPENAI_MODEL": "m",
        "CHAT_OPENAI_RETRIES": "1",
    }
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        response = http.post("/chat", json={"message": "hi"}, headers=bearer())
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"


def test_failures_before_the_first_token_are_retried(
    http: httpx.Client, upstream: FakeOpenAI
) -> None:
    message = f"flaky {uuid.uuid4()}"
    stream = _post(http, message)

    assert stream.status == 200 and stream.names[-1] == "done"
    assert upstream.attempts[message] == 2


def test_a_cut_mid_stream_is_an_error_event(http: httpx.Client) -> None:
    stream = _post(http, f"cut {uuid.uuid4()}")

    assert stream.text == "Half an ans"
    assert stream.events[-1].name == "error"
    assert stream.events[-1].data["code"] == "upstream_interrupted"


def test_a_stalled_upstream_is_cut_off_by_the_idle_timeout(http: httpx.Client) -> None:
    started = time.monotonic()
    stream = _post(http, f"stall {uuid.uuid4()}")

    assert stream.events[-1].data["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5


def test_a_client_disconnect_closes_the_upstream_request(
    svc: Service, upstream: FakeOpenAI
) -> None:
    message = f"slow {uuid.uuid4()}"
    with (
        httpx.Client(base_url=svc.url, timeout=30) as http,
        http.stream("POST", "/chat", json={"message": message}, headers=bearer()) as response,
    ):
        chunks = response.iter_raw()
        read_stream(response, time.monotonic(), limit=4, chunks=chunks)
        seen = next(r for r in upstream.requests if r.body["messages"][-1]["content"] == message)
        assert not seen.disconnected.is_set()
    closed_at = time.monotonic()
    assert seen.disconnected.wait(5)
    assert time.monotonic() - closed_at < 1.0


def test_a_client_leaving_before_the_first_byte_closes_the_upstream_request(
    svc: Service, upstream: FakeOpenAI
) -> None:
    """Regression: while the upstream had not answered yet, nothing watched the client."""
    message = f"slowstart {uuid.uuid4()}"
    with (
        httpx.Client(base_url=svc.url, timeout=httpx.Timeout(30, read=0.5)) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post("/chat", json={"message": message}, headers=bearer())
    left_at = time.monotonic()
    seen = next(r for r in upstream.requests if r.body["messages"][-1]["content"] == message)
    assert seen.disconnected.wait(5)
    assert time.monotonic() - left_at < 1.0
    svc.wait_for_records(lambda record: record.get("status") == 499)


def test_a_two_turn_conversation_carries_the_first_turn_upstream(
    http: httpx.Client, upstream: FakeOpenAI
) -> None:
    conversation = f"conv-{uuid.uuid4()}"
    token = make_token(sub="conversing")
    first = _post(http, "normal first question", token, conversation_id=conversation)
    second = _post(http, "normal second question", token, conversation_id=conversation)

    assert first.text.endswith("(0 earlier)")
    assert second.text.endswith("(2 earlier)")
    sent = upstream.requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "normal first question"},
        {"role": "assistant", "content": "Hello from the model (0 earlier)"},
        {"role": "user", "content": "normal second question"},
    ]
    assert second.headers["x-cache"] == "MISS"  # history is never served from the cache

    history = http.get(f"/conversations/{conversation}", headers=bearer(token))
    assert history.status_code == 200
    assert history.json()["id"] == conversation
    assert [m["role"] for m in history.json()["messages"]] == ["user", "assistant"] * 2


def test_another_users_conversation_is_a_404_and_stays_untouched(http: httpx.Client) -> None:
    conversation = f"conv-{uuid.uuid4()}"
    owner, other = make_token(sub="owner"), make_token(sub="intruder")
    _post(http, "normal mine", owner, conversation_id=conversation)

    assert http.get(f"/conversations/{conversation}", headers=bearer(other)).status_code == 404
    assert http.delete(f"/conversations/{conversation}", headers=bearer(other)).status_code == 404
    posted = http.post(
        "/chat",
        json={"message": "normal hijack", "conversation_id": conversation},
        headers=bearer(other),
    )
    assert posted.status_code == 404
    kept = http.get(f"/conversations/{conversation}", headers=bearer(owner)).json()
    assert kept["messages"][0]["content"] == "normal mine"
    assert len(kept["messages"]) == 2

    assert http.delete(f"/conversations/{conversation}", headers=bearer(owner)).status_code == 204
    assert http.get(f"/conversations/{conversation}", headers=bearer(owner)).status_code == 404


def test_logs_never_carry_the_api_key_or_upstream_bodies(svc: Service) -> None:
    everything = "\n".join(svc.lines)

    assert API_KEY not in everything
    assert LEAK not in everything


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_a_reply_cut_short_is_never_cached(
    http: httpx.Client, upstream: FakeOpenAI, reason: str
) -> None:
    message = f"{reason} {uuid.uuid4()}"
    first = _post(http, message)
    second = _post(http, message)
    assert first.events[-1].data["reason"] == reason
    assert [first.headers["x-cache"], second.headers["x-cache"]] == ["MISS", "MISS"]
    assert upstream.attempts[message] == 2


def test_a_natural_stop_is_cached(http: httpx.Client, upstream: FakeOpenAI) -> None:
    message = f"normal {uuid.uuid4()}"
    first, second = _post(http, message), _post(http, message)
    assert [first.headers["x-cache"], second.headers["x-cache"]] == ["MISS", "HIT"]
    assert second.text == first.text
    assert upstream.attempts[message] == 1


def test_with_user_scope_a_cached_reply_is_only_replayed_to_its_user(upstream: FakeOpenAI) -> None:
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_MODEL": "test-model",
        "CHAT_CACHE_SCOPE": "user",
    }
    message = f"normal {uuid.uuid4()}"
    alice, bob = make_token(sub="scoped-alice"), make_token(sub="scoped-bob")
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        caches = [_post(http, message, token).headers["x-cache"] for token in (alice, bob, alice)]
    assert caches == ["MISS", "MISS", "HIT"]
    assert upstream.attempts[message] == 2


@pytest.mark.parametrize(
    ("scenario", "status", "code", "attempts"),
    [
        ("status-503", 503, "upstream_unavailable", 3),  # retried: CHAT_OPENAI_RETRIES=2
        ("status-429", 503, "upstream_rate_limited", 3),
        ("status-401", 502, "upstream_refused", 1),  # never retried: it will not pass
        # Once more without `max_tokens` (a server may refuse the older name), then no more.
        ("status-400", 502, "upstream_error", 2),
    ],
)
def test_retries_are_bounded_and_only_for_what_may_pass(
    http: httpx.Client, upstream: FakeOpenAI, scenario: str, status: int, code: str, attempts: int
) -> None:
    message = f"{scenario} {uuid.uuid4()}"
    response = http.post("/chat", json={"message": message}, headers=bearer())
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert upstream.attempts[message] == attempts


def test_an_upstream_that_never_answers_is_504_after_its_retries(upstream: FakeOpenAI) -> None:
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_MODEL": "test-model",
        "CHAT_OPENAI_IDLE_TIMEOUT": "0.5",  # slowstart answers after 3 s
        "CHAT_OPENAI_RETRIES": "1",
    }
    message = f"slowstart {uuid.uuid4()}"
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url, timeout=30) as http:
        started = time.monotonic()
        response = http.post("/chat", json={"message": message}, headers=bearer())
        took = time.monotonic() - started
        errors = metric(svc.url, "chat_backend_errors_total", '{kind="upstream_timeout"}')
    assert (response.status_code, response.json()["code"]) == (504, "upstream_timeout")
    assert upstream.attempts[message] == 2
    assert took < 2 * 0.5 + 0.25 + 1.0  # two idle timeouts and one pause, not 3 s each
    assert errors == 1


def test_the_api_key_can_come_from_a_file(upstream: FakeOpenAI, tmp_path: Path) -> None:
    key_file = tmp_path / "openai-key"
    key_file.write_text("sk-from-a-file-8814\n")
    env = {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_MODEL": "test-model",
        "CHAT_OPENAI_API_KEY_FILE": str(key_file),
    }
    message = f"normal {uuid.uuid4()}"
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        assert _post(http, message).names[-1] == "done"
    seen = next(r for r in upstream.requests if r.body["messages"][-1]["content"] == message)
    assert seen.headers["authorization"] == "Bearer sk-from-a-file-8814"


def test_v1_passes_the_model_its_fields_and_history_upstream_and_its_usage_back(
    upstream: FakeOpenAI, svc: Service
) -> None:
    """Through /v1 the upstream gets the model asked for (one CHAT_MODELS names), the
    whole message list, the sampling fields and any field it did not know, as they came,
    the request's own output limit (capped), and the client gets the upstream's usage."""
    env = {**dict(svc.env), "CHAT_MODELS": "test-model,other-model"}
    env.pop("CHAT_PORT")
    message = f"normal {uuid.uuid4()}"
    body = {
        "model": "other-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "before"},
            {"role": "user", "content": [{"type": "text", "text": message}]},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "frobnicate": {"level": 3},
        "stream": False,
    }
    with running_service(env, workers=1) as v1, httpx.Client(base_url=v1.url, timeout=30) as http:
        models = http.get("/v1/models", headers=bearer()).json()
        answer = http.post("/v1/chat/completions", json=body, headers=bearer())
    assert [m["id"] for m in models["data"]] == ["test-model", "other-model"]
    assert answer.status_code == 200, answer.text
    [seen] = [s for s in upstream.requests if s.body["messages"][-1]["content"] == message]
    assert seen.body["model"] == "other-model"
    assert [m["role"] for m in seen.body["messages"]] == ["system", "user", "assistant", "user"]
    assert seen.body["temperature"] == 0.2
    assert seen.body["frobnicate"] == {"level": 3}
    assert seen.body["max_completion_tokens"] == 50 and seen.body["stream"] is True
    completion = answer.json()
    assert completion["model"] == "other-model"
    assert completion["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
