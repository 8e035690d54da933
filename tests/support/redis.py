"""A real `redis-server` per test run, on a free port, that tests may kill, restart,
freeze (SIGSTOP) and thaw. Readiness is the server's own "Ready to accept connections" line."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from .service import free_port


class RedisServer:
    """`extra`: more arguments for redis-server (a replica, TLS, Cluster mode, ...);
    `ready`: the line that says it is ready."""

    def __init__(
        self, extra: Sequence[str] = (), ready: str = "Ready to accept connections"
    ) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="chat-test-redis-")
        self.proc: subprocess.Popen[str] | None = None
        self.extra = list(extra)
        self.ready = ready
        self.output: list[str] = []

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--loglevel",
            "notice",
            *self.extra,
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                if self.ready in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(10) or proc.poll() is not None:
            raise RuntimeError("redis-server did not start:\n" + "".join(self.output[-20:]))

    def client(self) -> redis.Redis:
        """A client of this server's, for a test to look inside."""
        return redis.Redis.from_url(self.url)

    def keys(self, pattern: str) -> list[bytes]:
        client = self.client()
        try:
            return list(client.keys(pattern))
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
