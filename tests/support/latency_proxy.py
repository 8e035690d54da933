"""A TCP proxy that delays everything a client sends by a fixed time, as a network between
a pod and its Redis would: round trips become countable by the clock. Its own asyncio loop
runs in a thread; order is kept, since every chunk waits the same time."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .loops import stop_loop_thread


class LatencyProxy:
    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )

        async def delayed() -> None:
            while data := await reader.read(65536):
                self.loop.call_later(self.delay, upstream_writer.write, data)
            self.loop.call_later(self.delay, upstream_writer.close)

        async def back() -> None:
            while data := await upstream_reader.read(65536):
                writer.write(data)
            writer.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(delayed(), back())

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        stop_loop_thread(self.loop, self._thread)


@contextmanager
def latency_proxy(target_port: int, delay: float) -> Iterator[LatencyProxy]:
    proxy = LatencyProxy(target_port, delay)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
