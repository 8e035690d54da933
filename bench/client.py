"""An SSE load client lean enough not to be the bottleneck: one asyncio Protocol per
connection, HTTP/1.1 keep-alive, chunked decoding by hand, events counted, not parsed.

    python -m bench.client load HOST PORT --concurrency 10 --seconds 4 --tokens FILE [--openai]
    python -m bench.client idle HOST PORT --streams 5000 --tokens FILE [--detach]
    python -m bench.client paced HOST PORT --streams 1000 --tokens FILE

`load` prints one JSON object with per-stream samples (`--openai`: each a streamed
`POST /v1/chat/completions` instead of `GET /chat/...`); `idle` opens the streams, prints
`READY <n>` once each has its first event, and holds them until stdin closes (`--detach`:
hangs up on each batch once its first events came, so that the server holds its streams'
generations with no client, at most one batch of connections open at a time); `paced` opens
the streams (each emitting events at a model's pace, set on the server) and prints the gaps
between one content event and the next as the client saw them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import sys
import time
from dataclasses import dataclass

CONTENT = b"event: content"
OPENAI_CONTENT = b'"delta":{"content"'


@dataclass
class Sample:
    first_byte: float = 0.0
    first_content: float = 0.0
    events: int = 0
    ok: bool = False


class SSEConnection(asyncio.Protocol):
    content = CONTENT  # what marks a content event, first seen

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.state = "idle"
        self.remaining = 0
        self.sample = Sample()
        self.sent_at = 0.0
        self.tail = b""
        self.done: asyncio.Future[Sample] | None = None
        self.first_event: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.sample)
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, raw: bytes) -> asyncio.Future[Sample]:
        loop = asyncio.get_running_loop()
        self.sample = Sample()
        self.state = "head"
        self.buffer = self.tail = b""
        self.done = loop.create_future()
        self.first_event = loop.create_future()
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        sample = self.sample
        if not sample.first_byte:
            sample.first_byte = now - self.sent_at
        self.buffer += data
        buf = self.buffer
        while buf:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                status = buf[9:12]
                buf = buf[end + 4 :]
                self.state = "size" if status == b"200" else "error"
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(buf[:end], 16)
                buf = buf[end + 2 :]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining, self.state = size, "data"
            elif self.state == "data":
                payload = buf[: self.remaining]
                buf = buf[len(payload) :]
                self.remaining -= len(payload)
                self._payload(payload, now)
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(buf) < 2:
                    break
                buf = buf[2:]
                self.state = "size"
            elif self.state == "trailer":
                if len(buf) < 2:
                    break
                buf = buf[2:]
                sample.ok = True
                self.state = "idle"
                assert self.done is not None
                self.done.set_result(sample)
            else:  # an error status: give up on this connection
                assert self.transport is not None
                self.transport.close()
                buf = b""
        self.buffer = buf

    def _payload(self, payload: bytes, now: float) -> None:
        sample = self.sample
        joined = self.tail + payload
        sample.events += joined.count(b"\n\n") - self.tail.count(b"\n\n")
        self.tail = payload[-1:]
        if not sample.first_content and self.content in payload:
            sample.first_content = now - self.sent_at
        if sample.events and self.first_event is not None and not self.first_event.done():
            self.first_event.set_result(None)


class PacedConnection(SSEConnection):
    """Also records when content arrives: the gap since the previous content of the same
    stream (events that come in one chunk count as one arrival)."""

    def __init__(self) -> None:
        super().__init__()
        self.gaps: list[float] = []
        self.last_content = 0.0

    def _payload(self, payload: bytes, now: float) -> None:
        super()._payload(payload, now)
        if CONTENT in payload:
            if self.last_content:
                self.gaps.append(now - self.last_content)
            self.last_content = now


async def paced(host: str, port: int, streams: int, tokens: list[str]) -> dict[str, object]:
    """Open `streams` streams a little apart (as users arrive), read them to their end.
    Each asks something new (the run's own prefix): a reply the service has cached would
    come back at once, not paced."""
    loop = asyncio.get_running_loop()
    spread = 2.0  # seconds over which the streams open
    run = secrets.token_hex(4)

    async def one(i: int) -> PacedConnection:
        await asyncio.sleep(spread * i / streams)
        _, conn = await loop.create_connection(PacedConnection, host, port)
        await conn.request(_request(f"/chat/paced-{run}-{i}", tokens[i % len(tokens)]))
        assert conn.transport is not None
        conn.transport.close()
        return conn

    conns = await asyncio.gather(*(one(i) for i in range(streams)))
    gaps = sorted(gap for conn in conns for gap in conn.gaps)
    firsts = sorted(conn.sample.first_byte for conn in conns if conn.sample.ok)
    ok = sum(conn.sample.ok for conn in conns)
    return {
        "streams": streams,
        "ok": ok,
        "gaps": len(gaps),
        "p99_gap": gaps[int(0.99 * len(gaps))] if gaps else None,
        "max_gap": gaps[-1] if gaps else None,
        "p99_first": firsts[int(0.99 * len(firsts))] if firsts else None,
    }


def _request(path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


def _completion(message: str, token: str) -> bytes:
    body = json.dumps(
        {"model": "demo", "messages": [{"role": "user", "content": message}], "stream": True}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class CompletionConnection(SSEConnection):
    content = OPENAI_CONTENT


async def load(
    host: str, port: int, concurrency: int, seconds: float, tokens: list[str], openai: bool
) -> dict:
    loop = asyncio.get_running_loop()
    kind = CompletionConnection if openai else SSEConnection
    counter = itertools.count()
    samples: list[Sample] = []
    deadline = 0.0

    async def worker(index: int) -> None:
        _, conn = await loop.create_connection(kind, host, port)
        token = tokens[index % len(tokens)]
        while time.perf_counter() < deadline:
            n = next(counter)
            message = f"bench-{index}-{n}"
            raw = _completion(message, token) if openai else _request(f"/chat/{message}", token)
            sample = await conn.request(raw)
            if not sample.ok:
                samples.append(sample)
                return
            samples.append(sample)
        assert conn.transport is not None
        conn.transport.close()

    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "elapsed": elapsed,
        "samples": [[s.first_byte, s.first_content, s.events, s.ok] for s in samples],
    }


async def idle(host: str, port: int, streams: int, tokens: list[str], detach: bool = False) -> None:
    loop = asyncio.get_running_loop()
    conns: list[SSEConnection] = []
    batch = 250
    for start in range(0, streams, batch):
        count = min(streams, start + batch) - start
        opened = await asyncio.gather(
            *(loop.create_connection(SSEConnection, host, port) for _ in range(count))
        )
        waits = []
        for i, (_, conn) in enumerate(opened, start):
            conn.request(_request(f"/chat/idle-{i}", tokens[i % len(tokens)]))
            assert conn.first_event is not None
            waits.append(conn.first_event)
            conns.append(conn)
        await asyncio.wait_for(asyncio.gather(*waits), 60)
        if detach:
            for _, conn in opened:
                assert conn.transport is not None
                conn.transport.close()
            await asyncio.gather(*(conn.closed for _, conn in opened))
    print(f"READY {len(conns)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["load", "idle", "paced"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", help="write the load result here instead of stdout")
    parser.add_argument("--openai", action="store_true", help="load /v1/chat/completions")
    parser.add_argument("--detach", action="store_true", help="idle: hang up on each batch")
    args = parser.parse_args()
    with open(args.tokens) as file:
        tokens = json.load(file)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.mode == "load":
        result = asyncio.run(
            load(args.host, args.port, args.concurrency, args.seconds, tokens, args.openai)
        )
        if args.out:
            with open(args.out, "w") as out:
                json.dump(result, out)
        else:
            print(json.dumps(result))
    elif args.mode == "paced":
        print(json.dumps(asyncio.run(paced(args.host, args.port, args.streams, tokens))))
    else:
        asyncio.run(idle(args.host, args.port, args.streams, tokens, args.detach))


if __name__ == "__main__":
    main()
