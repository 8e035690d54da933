"""A real local HTTP server that speaks OpenAI's streaming chat-completions format.

What it does is chosen by the last user message (see `SCENARIOS` in `_respond`), and it
records every request and every client disconnect so tests can see what the upstream saw.
It runs its own asyncio loop in a thread; responses are close-delimited HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .loops import stop_loop_thread

LEAK = "UPSTREAM-SECRET-BODY-7731"


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]
    disconnected: threading.Event = field(default_factory=threading.Event)


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.attempts: dict[str, int] = {}
        self.consumed: list[int] = []  # tokens each metered request used (see `_metered`)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        stop_loop_thread(self.loop, self._thread)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self.loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        except (asyncio.IncompleteReadError, ValueError):
            writer.close()
            return
        seen = Seen(headers, body)
        self.requests.append(seen)

        async def watch() -> None:
            await reader.read()  # EOF: the client closed its end
            seen.disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._respond(seen, writer)
        except (ConnectionError, RuntimeError):
            seen.disconnected.set()
        finally:
            if not writer.is_closing():
                writer.close()
            await asyncio.sleep(0)
            watcher.cancel()

    async def _respond(self, seen: Seen, writer: asyncio.StreamWriter) -> None:
        message = seen.body["messages"][-1]["content"]
        scenario = message.split()[0] if message.split() else ""
        self.attempts[message] = self.attempts.get(message, 0) + 1

        def start(status: str = "200 OK", content_type: str = "text/event-stream") -> None:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                "Connection: close\r\n\r\n".encode()
            )

        async def chunk(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            writer.write(f"data: {data}\n\n".encode())
            await writer.drain()

        def delta(**fields: Any) -> dict[str, Any]:
            return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}

        if scenario == "no-max-tokens" and "max_tokens" in seen.body:
            # A server that knows only `max_completion_tokens` (OpenAI's reasoning models).
            start("400 Bad Request", "application/json")
            writer.write(b'{"error": {"message": "Unsupported parameter: max_tokens"}}')
            await writer.drain()
            return
        if scenario.startswith("status-"):
            code = scenario.split("-")[1]
            start(f"{code} Nope", "application/json")
            writer.write(json.dumps({"error": {"message": LEAK}}).encode())
            await writer.drain()
            return
        if scenario == "slowstart":  # headers only after 3 s: a slow-to-answer upstream
            await asyncio.sleep(3)
        if scenario == "flaky" and self.attempts[message] == 1:
            start("503 Service Unavailable", "application/json")
            writer.write(b'{"error": "warming up"}')
            return
        start()
        if scenario == "stall":
            await chunk(delta(content="Only this"))
            await asyncio.sleep(3600)
        if scenario == "slow":
            for i in range(600):
                await chunk(delta(content=f"tick {i} "))
                await asyncio.sleep(0.05)
            return
        if scenario == "cut":
            await chunk(delta(content="Half an ans"))
            writer.transport.abort()
            return
        if scenario in ("budget", "nousage"):
            await self._metered(seen, message, chunk, delta, usage=scenario == "budget")
            return
        field_name = "reasoning" if scenario == "reasoning-field" else "reasoning_content"
        await chunk(delta(role="assistant", content=""))
        await chunk(delta(**{field_name: "First I read "}))
        await chunk(delta(**{field_name: "the question.\nThen I answer."}))
        history = len(seen.body["messages"]) - 1
        for piece in ("Hello", " from", " the", f" model ({history} earlier)"):
            await chunk(delta(content=piece))
        # `length` and `content_filter` cut a reply short; anything else stops naturally.
        reason = scenario if scenario in ("length", "content_filter") else "stop"
        await chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        await chunk(
            {
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
            }
        )
        await chunk("[DONE]")

    async def _metered(self, seen: Seen, message: str, chunk: Any, delta: Any, usage: bool) -> None:
        """`budget N [pause]`: N tokens, a word each, `pause` seconds apart (0.01), as far
        as the request's output limit lets it; then its own usage report (`budget`), or none
        (`nousage`). Every usage it reports is recorded in `self.usage`."""
        words = message.split()
        wanted = int(words[1]) if len(words) > 1 else 10
        pause = float(words[2]) if len(words) > 2 else 0.01
        cap = seen.body.get("max_completion_tokens") or seen.body.get("max_tokens") or wanted
        sent = 0
        reason = "stop"
        try:
            for _ in range(wanted):
                if sent >= cap:
                    reason = "length"
                    break
                await chunk(delta(content=f"w{sent} "))
                sent += 1
                await asyncio.sleep(pause)
        finally:
            prompt = count_prompt_tokens(seen.body["messages"])
            # What it consumed, reported or not: the truth a budget is checked against.
            self.consumed.append(prompt + sent)
        await chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        if usage:
            report = {"prompt_tokens": prompt, "completion_tokens": sent}
            await chunk({"choices": [], "usage": {**report, "total_tokens": prompt + sent}})
        await chunk("[DONE]")


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """This upstream's own count of a prompt: a token a word, and OpenAI's framing (four a
    message, three priming the reply). It differs from the service's estimate on purpose."""
    return 3 + sum(4 + len(str(m.get("content", "")).split()) for m in messages)


@contextmanager
def running_fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
