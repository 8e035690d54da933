"""A load generator in a process of its own, to drive a worker's event loop to full CPU.

    python -m tests.support.load PORT --seconds 10 --concurrency 60 --message TEXT

Each of `concurrency` connections asks in turn for `GET /chat/<message>` as a new user (a
fresh token each time, so no rate limit or stream cap of one user applies), reads the
stream to its end and asks again, until `seconds` have passed. One message for all: once
it is cached, each request replays the whole reply at once, with no pauses, so a long
message keeps the worker's CPU full. It prints one
JSON line, `{"streams": n, "statuses": {...}}`, and exits. It does not parse events:
it has to be cheaper per stream than the server it loads.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from urllib.parse import quote

from tests.support.tokens import make_token


async def _one(port: int, path: str, token: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: load\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    head = await reader.readline()
    status = int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0
    while await reader.read(65536):
        pass
    writer.close()
    return status


async def run(port: int, seconds: float, concurrency: int, message: str) -> dict[str, object]:
    counter = itertools.count()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    path = f"/chat/{quote(message)}"

    async def worker() -> None:
        while time.monotonic() < deadline:
            token = make_token(sub=f"load-{next(counter)}")
            try:
                statuses[await _one(port, path, token)] += 1
            except OSError:
                statuses[0] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"streams": sum(statuses.values()), "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=60)
    parser.add_argument("--message", required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args.port, args.seconds, args.concurrency, args.message))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
