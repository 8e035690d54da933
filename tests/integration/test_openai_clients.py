"""Any OpenAI client, no new code: OpenAI's own SDKs (PyPI `openai`, sync and async; npm
`openai`), LangChain's `ChatOpenAI` and the LiteLLM proxy, pointed at the real service's
`/v1`, get the demo's reply, its usage, and every error as the exception class their SDK
maps it to."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.support.demo_text import demo_reply
from tests.support.service import LIMITS_OFF, REPO, Service, free_port, running_service
from tests.support.tokens import make_token

PEERS = REPO / "tests" / "peers"
LITELLM = REPO / ".tools" / "litellm" / "bin" / "litellm"
THINKING = [
    "Understanding your question...",
    "Analysing the context...",
    "Searching for relevant knowledge...",
    "Composing the answer...",
]


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    with running_service({**LIMITS_OFF, "CHAT_CACHE_TTL": "0"}, workers=2) as service:
        yield service


def _client(svc: Service, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{svc.url}/v1", api_key=make_token(), **options)  # type: ignore[arg-type]


def test_the_python_sdk_streams_the_reply_its_thinking_and_its_usage(svc: Service) -> None:
    with _client(svc) as client:
        stream = client.chat.completions.create(
            model="demo",
            messages=[
                {"role": "system", "content": "You are brief."},
                {"role": "user", "content": "hello sdk"},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo_reply("hello sdk")
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning.splitlines() == THINKING
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == (
        chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )
    assert chunks[-1].usage.completion_tokens > 0


def test_the_async_sdk_gets_one_completion_in_one_piece(svc: Service) -> None:
    async def body() -> openai.types.chat.ChatCompletion:
        async with openai.AsyncOpenAI(base_url=f"{svc.url}/v1", api_key=make_token()) as client:
            streamed = await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "async"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
            assert text == demo_reply("async")
            return await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "in one piece"}]
            )

    completion = asyncio.run(body())
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == demo_reply("in one piece")
    assert (choice.message.model_extra or {})["reasoning_content"].splitlines() == THINKING
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_the_models_are_listed_and_another_model_is_not_found(svc: Service) -> None:
    with _client(svc, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["demo"]
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(
                model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
            )
    assert missing.value.code == "model_not_found"


def test_a_bad_token_is_an_authentication_error(svc: Service) -> None:
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="sk-not-ours", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])


def test_an_invalid_request_is_a_bad_request_error(svc: Service) -> None:
    with _client(svc, max_retries=0) as client, pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert bad.value.param == "n"


def test_the_rate_limit_is_a_rate_limit_error_with_openais_headers() -> None:
    env = {"CHAT_RATE_LIMIT": "1/minute"}
    with running_service(env, workers=1) as svc, _client(svc, max_retries=0) as client:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "one"}])
        with pytest.raises(openai.RateLimitError) as rated:
            client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "one more"}]
            )
    assert rated.value.code == "rate_limit_exceeded"
    headers = rated.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


def test_the_sdk_waits_as_long_as_the_service_says_before_it_gives_up() -> None:
    """Over the open-stream cap (Retry-After: 5), the SDK's own retry waits what the
    service said (its own backoff would wait under a second), then raises RateLimitError."""
    env = {**LIMITS_OFF, "CHAT_MAX_STREAMS_PER_USER": "1", "CHAT_DEMO_DELAY_SCALE": "1"}
    with running_service(env, workers=1) as svc, _client(svc, max_retries=1) as client:
        held = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "h" * 300}], stream=True
        )
        next(iter(held))  # the one open stream the cap allows, open for ~11 s
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as capped:
            client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "a second"}]
            )
        waited = time.monotonic() - started
        held.close()
    assert capped.value.response.headers["retry-after"] == "5"
    assert 5 <= waited < 9  # one retry, after the 5 s the service asked for


def test_the_node_sdk_streams_the_reply_with_for_await(svc: Service) -> None:
    node = shutil.which("node")
    assert node, "scripts/test.sh installs Node.js"
    result = subprocess.run(
        [node, "openai-client.mjs", f"{svc.url}/v1", make_token(), "demo", "from node"],
        cwd=PEERS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["text"] == demo_reply("from node")
    assert got["usage"]["total_tokens"] > 0


def test_langchain_chat_openai_streams_the_reply(svc: Service) -> None:
    chat = ChatOpenAI(model="demo", base_url=f"{svc.url}/v1", api_key=make_token(), max_retries=0)
    text = "".join(str(chunk.content) for chunk in chat.stream("from langchain"))
    assert text == demo_reply("from langchain")


def test_a_litellm_proxy_in_front_streams_what_the_service_generated(svc: Service) -> None:
    assert LITELLM.exists(), "scripts/test.sh installs the LiteLLM proxy into .tools/litellm"
    key = "sk-litellm-test-" + "0123456789abcdef" * 2
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="chat-litellm-"))
    config = directory / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: via-litellm\n"
        "    litellm_params:\n"
        "      model: openai/demo\n"
        f"      api_base: {svc.url}/v1\n"
        f"      api_key: {make_token(sub='litellm', ttl=3600)}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(directory),
        "LITELLM_MASTER_KEY": key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of prices from the internet
    }
    proc = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Application startup complete" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120) and proc.poll() is None, "".join(lines[-30:])
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key) as client:
            stream = client.chat.completions.create(
                model="via-litellm",
                messages=[{"role": "user", "content": "through litellm"}],
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
    assert text == demo_reply("through litellm")
    served = [r for r in svc.records() if r.get("route") == "/v1/chat/completions"]
    assert any(r.get("user") == "litellm" and r.get("outcome") == "done" for r in served)


def test_the_v1_errors_are_openai_shaped(svc: Service) -> None:
    with httpx.Client(base_url=svc.url, timeout=10) as http:
        token = {"Authorization": f"Bearer {make_token()}"}
        too_big = http.post(
            "/v1/chat/completions", content=b"x" * 70_000, headers={**token, **_json()}
        )
        not_json = http.post("/v1/chat/completions", content=b"{", headers={**token, **_json()})
        no_messages = http.post("/v1/chat/completions", json={"model": "demo"}, headers=token)
    for response, status in ((too_big, 413), (not_json, 400), (no_messages, 400)):
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    assert no_messages.json()["error"]["param"] == "messages"


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}
