"""Logs and metrics: JSON lines only, no secrets, totals summed over workers, streams
counted back to zero after a disconnect."""

from __future__ import annotations

import json
import re
import time

import httpx

from tests.support.service import Service, running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token

SECRET_MESSAGE = "my-private-message-text-4242"


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def _wait_for_metric(service: Service, name: str, value: float, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        current = _metric(httpx.get(f"{service.url}/metrics").text, name)
        if current == value or time.monotonic() > deadline:
            return current
        time.sleep(0.05)  # polling a gauge another process updates; no event to await


def test_every_stdout_line_is_json_with_the_contract_keys(
    service: Service, client: httpx.Client
) -> None:
    token = make_token(sub="log-user")
    stream_chat(client, "GET", f"/chat/{SECRET_MESSAGE}", headers=bearer(token))
    client.post("/chat", json={"message": SECRET_MESSAGE}, headers=bearer(token))
    service.wait_for(lambda lines: sum('"log-user"' in line for line in lines) >= 2)

    records = service.records()  # raises if any line is not JSON
    assert records
    for record in records:
        assert {"timestamp", "level", "event"} <= record.keys()
    summary = next(r for r in records if r.get("user") == "log-user" and r["method"] == "GET")
    for key in (
        "request_id",
        "method",
        "route",
        "status",
        "duration_ms",
        "outcome",
        "events",
        "bytes",
        "ttft_ms",
        "cache",
        "message_chars",
    ):
        assert key in summary, key
    assert summary["route"] == "/chat/{message}"
    assert summary["outcome"] == "done"
    assert summary["message_chars"] == len(SECRET_MESSAGE)
    everything = "\n".join(service.lines)
    assert SECRET_MESSAGE not in everything
    assert token not in everything
    assert token.split(".")[2] not in everything


def test_metrics_count_the_same_total_whichever_worker_answers(service: Service) -> None:
    before = _metric(
        httpx.get(f"{service.url}/metrics").text,
        "chat_http_requests_total",
        '{method="GET",route="/healthz",status="200"}',
    )
    for _ in range(20):  # a fresh connection each: the kernel spreads them over workers
        httpx.get(f"{service.url}/healthz")
    scrapes = []
    for _ in range(6):
        text = httpx.get(f"{service.url}/metrics").text
        scrapes.append(
            _metric(
                text, "chat_http_requests_total", '{method="GET",route="/healthz",status="200"}'
            )
        )

    assert all(value >= before + 20 for value in scrapes)
    assert len(set(scrapes)) == 1
    assert "chat_build_info" in text
    assert 'route="/healthz"' in text and "/chat/hi" not in text


def test_a_disconnect_brings_active_streams_back_to_zero() -> None:
    with running_service({"CHAT_DEMO_DELAY_SCALE": "1"}, workers=2) as svc:
        with (
            httpx.Client(base_url=svc.url, timeout=30) as http,
            http.stream("GET", "/chat/hello", headers=bearer()) as response,
        ):
            chunks = response.iter_raw()
            stream = read_stream(response, time.monotonic(), limit=2, chunks=chunks)
            assert stream.names == ["start", "thinking"]
            assert _metric(httpx.get(f"{svc.url}/metrics").text, "chat_streams_active") == 1.0
        # The client is gone; the server must notice, cancel, and count the stream closed.
        svc.wait_for_outcome("disconnected")
        assert _wait_for_metric(svc, "chat_streams_active", 0.0) == 0.0


def test_log_lines_are_json_for_gunicorn_and_uvicorn_too(service: Service) -> None:
    loggers = {record.get("logger") for record in service.records()}

    assert {"gunicorn.error", "uvicorn.error", "service.access"} <= loggers
    assert all(json.dumps(r) for r in service.records())


def test_metrics_port_serves_metrics_only_and_the_main_port_hides_them() -> None:
    from tests.support.service import free_port

    metrics_port = free_port()
    with running_service({"CHAT_METRICS_PORT": str(metrics_port)}, workers=1) as svc:
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        assert httpx.get(f"{svc.url}/metrics").status_code == 404
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
        scraped = httpx.get(f"{metrics_url}/metrics")
        assert scraped.status_code == 200
        assert "chat_build_info" in scraped.text
        assert httpx.get(f"{metrics_url}/healthz").status_code == 404
        assert httpx.get(f"{metrics_url}/chat/hi", headers=bearer()).status_code == 404
