"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM, ...):
`POST {CHAT_OPENAI_BASE_URL}/chat/completions` with `stream: true`.

The upstream's SSE chunks become our events: `delta.content` -> `content`, reasoning deltas
(`reasoning_content` from DeepSeek/vLLM/llama.cpp, `reasoning` from OpenRouter/Ollama) ->
`thinking`, gathered into steps at line ends so a step is a line, not a token; `done` carries
`finish_reason` and `usage` when the upstream sends them (`stream_options.include_usage`).

The output limit (CHAT_MAX_OUTPUT_TOKENS) goes as `max_completion_tokens`, OpenAI's name,
and as `max_tokens` for servers that know only the older one. OpenAI's reasoning models
refuse `max_tokens` with a 400; after such a refusal the request is sent once more
without it, and when that is accepted this backend leaves it out from then on.

Failures: before the response starts (connect error, timeout, non-2xx) `open()` raises
BackendError with a stable code and the route answers JSON 502/503/504; connect errors, 429
and 5xx are retried a bounded number of times first. Once streaming, a cut, a malformed chunk
or an idle gap longer than CHAT_OPENAI_IDLE_TIMEOUT (httpx's read timeout) ends the stream
with an `error` event. Neither ever carries the upstream's body or our key. Closing the
iterator (a client disconnect) closes the upstream response, and with it the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx

from ..config import Settings
from ..events import Event
from . import BackendError, ChatRequest

RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REASONING_FIELDS = ("reasoning_content", "reasoning")
STEP_FLUSH_CHARS = 240


class OpenAIBackend:
    name = "openai"
    opens_upstream = True

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        assert settings.openai_base_url and settings.openai_model
        self.model = settings.openai_model
        self.url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self.retries = settings.openai_retries
        self.max_output_tokens = settings.max_output_tokens
        self.legacy_limit = True  # also send `max_tokens`, until a 400 says not to
        headers = {"Accept": "text/event-stream"}
        if settings.openai_api_key:
            headers["Authorization"] = f"Bearer {settings.openai_api_key}"
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=settings.openai_connect_timeout,
                read=settings.openai_idle_timeout,
                write=settings.openai_connect_timeout,
                pool=settings.openai_connect_timeout,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=transport,
        )

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        messages = [{"role": t.role, "content": t.content} for t in request.history]
        messages.append({"role": "user", "content": request.message})
        limit = min(request.max_tokens or self.max_output_tokens, self.max_output_tokens)
        # An OpenAI client's other fields (sampling, and whatever else) go as they came;
        # what this backend needs of the upstream is its own to say.
        body: dict[str, Any] = {
            **request.params,
            "model": request.model or self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": limit,
        }
        body.pop("max_tokens", None)
        if self.legacy_limit:
            body["max_tokens"] = limit
        return body

    async def open(self, request: ChatRequest) -> AsyncIterator[Event]:
        body = self._body(request)
        attempt = 0
        while True:
            last = attempt == self.retries
            stack = AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self.client.stream("POST", self.url, json=body)
                )
            except httpx.HTTPError as exc:  # TimeoutException is one too
                await stack.aclose()
                if last:
                    raise _unreachable(exc) from None
            else:
                if response.status_code < 300:
                    if self.legacy_limit and "max_tokens" not in body:
                        self.legacy_limit = False  # it refused the older name: leave it out
                    return self._events(stack, response)
                await stack.aclose()  # the body (and whatever it says) is never read
                if response.status_code == 400 and "max_tokens" in body:
                    # Perhaps a server that refuses the older name: once more without it.
                    body = {k: v for k, v in body.items() if k != "max_tokens"}
                    continue
                if last or response.status_code not in RETRY_STATUSES:
                    raise _refusal(response.status_code)
            await asyncio.sleep(RETRY_PAUSES[attempt])
            attempt += 1

    async def _events(
        self, stack: AsyncExitStack, response: httpx.Response
    ) -> AsyncIterator[Event]:
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        step = ""
        finished = False
        async with stack:
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = _parse(data)
                    if "error" in chunk:
                        raise BackendError("upstream_error", "the model reported an error")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        reasoning = next(
                            (delta[f] for f in REASONING_FIELDS if isinstance(delta.get(f), str)),
                            "",
                        )
                        if reasoning:
                            step += reasoning
                            while "\n" in step or len(step) >= STEP_FLUSH_CHARS:
                                line_end = step.find("\n")
                                cut = line_end if line_end >= 0 else _word_boundary(step)
                                text, step = step[:cut].strip(), step[cut:].lstrip("\n")
                                if text:
                                    yield Event("thinking", {"step": text})
                        content = delta.get("content")
                        if isinstance(content, str) and content:
                            if step.strip():
                                yield Event("thinking", {"step": step.strip()})
                            step = ""
                            yield Event("content", {"text": content})
                        finish_reason = choice.get("finish_reason") or finish_reason
            except httpx.TimeoutException:
                raise BackendError("upstream_timeout", "the model stopped responding") from None
            except httpx.HTTPError:
                raise BackendError("upstream_interrupted", "the model's stream was cut") from None
            if not finished and finish_reason is None and usage is None:
                # A close without [DONE], finish_reason or usage is a cut, not an answer.
                raise BackendError("upstream_interrupted", "the model's stream was cut")
        if step.strip():
            yield Event("thinking", {"step": step.strip()})
        done: dict[str, Any] = {"reason": finish_reason or "stop"}
        if usage is not None:
            done["usage"] = {
                k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)
            }
        yield Event("done", done)

    async def aclose(self) -> None:
        await self.client.aclose()


def _parse(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise BackendError("upstream_error", "the model sent a malformed chunk") from None
    if not isinstance(chunk, dict):
        raise BackendError("upstream_error", "the model sent a malformed chunk")
    return chunk


def _word_boundary(text: str) -> int:
    space = text.rfind(" ", 0, STEP_FLUSH_CHARS)
    return space if space > 0 else STEP_FLUSH_CHARS


def _unreachable(exc: httpx.HTTPError) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendError("upstream_timeout", "the model did not answer", 504)
    return BackendError("upstream_unavailable", "the model is unreachable", 503)


def _refusal(status: int) -> BackendError:
    if status == 429:
        return BackendError("upstream_rate_limited", "the model is busy; try again later", 503)
    if status in (401, 403):
        return BackendError("upstream_refused", "the model refused our credentials", 502)
    if status in (502, 503, 504):
        return BackendError("upstream_unavailable", "the model is unavailable", 503)
    return BackendError("upstream_error", f"the model answered HTTP {status}", 502)
