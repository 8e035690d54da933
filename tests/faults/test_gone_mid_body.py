"""A client that goes away in the middle of its `POST /chat` body is an ordinary disconnect.

Before, the worker logged it as an unhandled error with a traceback and counted a 500
(Starlette's `ClientDisconnect` escaped the body read).
"""

from __future__ import annotations

import socket

from tests.support.metrics import scrape
from tests.support.service import running_service
from tests.support.tokens import make_token


def test_a_client_leaving_mid_body_is_logged_as_disconnected_not_an_error() -> None:
    with running_service({}, workers=1) as svc:
        head = (
            b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + make_token().encode() + b"\r\n"
            b"X-Request-ID: gone-mid-body\r\nContent-Length: 1000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
            sock.sendall(head + b'{"message": "half')
        svc.wait_for_records(lambda r: r.get("request_id") == "gone-mid-body")
        [line] = [r for r in svc.records() if r.get("request_id") == "gone-mid-body"]
        samples = scrape(svc.url)
    assert line["status"] == 499
    assert line["outcome"] == "disconnected"
    assert line["level"] == "info"
    assert samples['chat_http_requests_total{method="POST",route="/chat",status="499"}'] == 1
    assert not [key for key in samples if 'status="500"' in key]
    assert not [r for r in svc.records() if r.get("exception") or r.get("level") == "error"]
