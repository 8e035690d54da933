"""SIGTERM: open streams finish within the graceful period; those still open after it end
with an `error` event `{"code": "shutdown"}`; /readyz fails while draining."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

from tests.support.service import Service, running_service
from tests.support.sse import Stream, stream_chat
from tests.support.tokens import bearer


def _stream_in_background(url: str, result: list[Stream]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            result.append(stream_chat(http, "GET", "/chat/drain-me", headers=bearer()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _sigterm_during_a_stream(svc: Service) -> Stream:
    """Open a stream, SIGTERM gunicorn while it is open, and return what the client read.
    Meanwhile, once the worker stops accepting, a new connection must be refused."""
    result: list[Stream] = []
    thread = _stream_in_background(svc.url, result)
    # Wait until the stream is really open: the gauge is written as it starts.
    _wait_open(svc.url)
    svc.proc.send_signal(signal.SIGTERM)
    svc.wait_for_event("Waiting for connections to close")
    assert thread.is_alive()  # the stream is still draining...
    with pytest.raises(ConnectionRefusedError):  # ...and nobody new gets in
        socket.create_connection(("127.0.0.1", svc.port), timeout=5)
    thread.join(30)
    assert svc.proc.wait(30) == 0
    (stream,) = result
    return stream


def test_sigterm_drains_an_open_stream_to_done() -> None:
    with running_service({"CHAT_DEMO_DELAY_SCALE": "0.5"}, workers=2) as svc:
        stream = _sigterm_during_a_stream(svc)

    assert stream.names[-1] == "done"
    assert stream.text.startswith("You said: drain-me.")


def test_streams_still_open_after_the_graceful_period_end_with_a_shutdown_event() -> None:
    env = {"CHAT_DEMO_DELAY_SCALE": "20", "CHAT_GRACEFUL_TIMEOUT": "1"}
    with running_service(env, workers=1) as svc:
        stream = _sigterm_during_a_stream(svc)
        svc.wait_for_outcome("shutdown")

    assert stream.names[-1] == "error"
    assert stream.events[-1].data["code"] == "shutdown"


def _wait_open(url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "chat_streams_active 1.0" in httpx.get(f"{url}/metrics").text:
            return
        time.sleep(0.02)  # the gauge lives in another process; there is no event to await
    raise TimeoutError("stream never opened")


def test_a_stream_that_begins_after_the_graceful_period_ends_at_once_with_shutdown() -> None:
    """Its request was on its way when the drain ended (here: the body sent late). Before,
    it streamed until uvicorn cancelled it seconds later, with no `shutdown` event, and
    was logged as `done`."""
    env = {"CHAT_DEMO_DELAY_SCALE": "1", "CHAT_GRACEFUL_TIMEOUT": "1"}
    body = b'{"message": "late"}'
    with running_service(env, workers=1) as svc:
        with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as sock:
            sock.sendall(
                b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: {bearer()['Authorization']}\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            svc.proc.send_signal(signal.SIGTERM)
            svc.wait_for_event("graceful period over")
            sent = time.monotonic()
            sock.sendall(body)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            took = time.monotonic() - sent
        assert svc.proc.wait(30) == 0
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"event: thinking" not in received
    assert b'event: error\ndata: {"code":"shutdown"' in received
    assert took < 1.0
    assert any(r.get("route") == "/chat" and r.get("outcome") == "shutdown" for r in svc.records())
