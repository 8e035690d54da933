"""Start the real service (`chat-service serve`, gunicorn + uvicorn workers) on a free port.

Readiness is awaited as an event (every worker logging "Application startup complete"),
not guessed with sleeps; the process is stopped by its PID with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .tokens import SECRET

REPO = Path(__file__).resolve().parents[2]

# For tests about something else: rate and open-stream limits that never bite.
LIMITS_OFF = {"CHAT_RATE_LIMIT": "1000000/minute", "CHAT_MAX_STREAMS_PER_USER": "100000"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chat_service_command() -> list[str]:
    script = Path(sys.executable).parent / "chat-service"
    if script.exists():
        return [str(script)]
    found = shutil.which("chat-service")
    return [found] if found else [sys.executable, "-m", "service"]


class Service:
    def __init__(self, proc: subprocess.Popen[str], port: int, env: dict[str, str]) -> None:
        self.proc = proc
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def records(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (raises if one is not)."""
        with self._changed:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line]

    def wait_for(
        self, predicate: Callable[[list[str]], bool], timeout: float = 15.0, what: str = "log"
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"service never showed {what}; last lines:\n{tail}")
                self._changed.wait(remaining)

    def wait_for_records(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        timeout: float = 15.0,
    ) -> None:
        """Wait until `count` JSON log records satisfy `predicate`."""

        def enough(lines: list[str]) -> bool:
            return sum(predicate(_record(line)) for line in lines) >= count

        self.wait_for(enough, timeout, f"{count} matching log records")

    def wait_for_outcome(self, outcome: str, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_for_records(lambda r: r.get("outcome") == outcome, count, timeout)

    def wait_for_event(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_for(
            lambda lines: sum(text in line for line in lines) >= count, timeout, repr(text)
        )

    def worker_pids(self) -> set[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True
        ).stdout
        return {int(pid) for pid in out.split()}

    @contextmanager
    def served_by(self, pid: int) -> Iterator[None]:
        """Only worker `pid` accepts connections meanwhile: the others are stopped (SIGSTOP),
        so they cannot take a connection from the shared listening socket. Keep it short:
        gunicorn replaces a worker silent for its timeout (30 s)."""
        others = self.worker_pids() - {pid}
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)

    @contextmanager
    def client_of(self, pid: int, timeout: float = 30) -> Iterator[httpx.Client]:
        """An HTTP client whose one keep-alive connection worker `pid` holds, while every
        worker runs: the connection is made (and proven, by a request it answers) while
        only that worker accepts."""
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=self.url, timeout=timeout, limits=limits) as http:
            with self.served_by(pid):
                assert http.get("/healthz").status_code == 200
            yield http

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            workers = self.worker_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                # A killed arbiter leaves its workers behind: they were ours too.
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        return self.proc.returncode


def _record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def service_env(overrides: Mapping[str, str] | None = None, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        CHAT_HOST="127.0.0.1",
        CHAT_PORT=str(port),
        CHAT_JWT_SECRET=SECRET,
        CHAT_DEMO_DELAY_SCALE="0",
        CHAT_LOG_LEVEL="info",
        # Every test client is 127.0.0.1: the per-address limit has tests of its own.
        CHAT_IP_RATE_LIMIT="1000000/minute",
    )
    env.update(overrides or {})
    return env


def start_service(
    env: Mapping[str, str] | None = None, workers: int = 2, port: int | None = None
) -> Service:
    port = port or free_port()
    full_env = service_env({"CHAT_WORKERS": str(workers), **(env or {})}, port)
    if "PROMETHEUS_MULTIPROC_DIR" not in full_env:
        full_env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chat-test-metrics-")
    proc = subprocess.Popen(
        [*chat_service_command(), "serve"],
        env=full_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    service = Service(proc, port, full_env)
    try:
        service.wait_for_event("Application startup complete", count=workers, timeout=30)
    except BaseException:
        service.stop()
        raise
    return service


@contextmanager
def running_service(
    env: Mapping[str, str] | None = None, workers: int = 2, port: int | None = None
) -> Iterator[Service]:
    """`port`: a port chosen beforehand (another process must know the URL first)."""
    service = start_service(env, workers, port)
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
