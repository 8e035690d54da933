"""Logs and metrics: JSON lines only, no secrets, totals summed over workers, streams
counted back to zero after a disconnect."""

from __future__ import annotations

import json
import time

import httpx

from tests.support.metrics import metric, scrape, wait_for_metric
from tests.support.service import Service, running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token

SECRET_MESSAGE = "my-private-message-text-4242"


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
    summary = next(r for r in records if r.get("user") == "log-user" and r.get("method") == "GET")
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


def test_metrics_count_the_same_total_whichever_worker_answers() -> None:
    """Each worker counts its own requests; every scrape, whichever worker answers it,
    sums them all. Proven by making each worker serve alone in turn."""
    healthz = '{method="GET",route="/healthz",status="200"}'
    with running_service(workers=2) as svc:
        workers = sorted(svc.worker_pids())
        assert len(workers) == 2
        for pid, count in zip(workers, (7, 13), strict=True):
            with svc.served_by(pid):
                for _ in range(count):
                    assert httpx.get(f"{svc.url}/healthz").status_code == 200
        scrapes = []
        for pid in workers:  # a scrape answered by each worker
            with svc.served_by(pid):
                scrapes.append(metric(svc.url, "chat_http_requests_total", healthz))
        text = httpx.get(f"{svc.url}/metrics").text
    assert scrapes == [20.0, 20.0]
    assert 'route="/healthz"' in text and "/chat/hi" not in text


def test_a_disconnect_brings_active_streams_back_to_zero() -> None:
    with running_service({"CHAT_DEMO_DELAY_SCALE": "1"}, workers=2) as svc:
        assert metric(svc.url, "chat_streams_active") == 0.0
        with (
            httpx.Client(base_url=svc.url, timeout=30) as http,
            http.stream("GET", "/chat/hello", headers=bearer()) as response,
        ):
            chunks = response.iter_raw()
            stream = read_stream(response, time.monotonic(), limit=2, chunks=chunks)
            assert stream.names == ["start", "thinking"]
            assert metric(svc.url, "chat_streams_active") == 1.0
        # The client is gone; the server must notice, cancel, and count the stream closed.
        svc.wait_for_outcome("disconnected")
        wait_for_metric(svc.url, "chat_streams_active", 0.0, timeout=5)


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
        # The probes answer there too (the contract: client connections never crowd them
        # out there), and nothing else does.
        assert httpx.get(f"{metrics_url}/healthz").status_code == 200
        assert httpx.get(f"{metrics_url}/readyz").status_code == 200
        assert httpx.get(f"{metrics_url}/chat/hi", headers=bearer()).status_code == 404


def test_a_stream_is_counted_in_every_stream_metric() -> None:
    """Each name the contract fixes for dashboards moves when a stream runs."""
    with running_service(workers=1) as svc:
        url = svc.url
        before = scrape(url)
        with httpx.Client(base_url=url, timeout=30) as http:
            stream = stream_chat(http, "GET", "/chat/count-me", headers=bearer())
        svc.wait_for_outcome("done")
        after = scrape(url)

    def moved(sample: str) -> float:
        return after[sample] - before.get(sample, 0.0)

    contents = stream.names.count("content")
    assert moved('chat_stream_events_total{event="content"}') == contents
    assert moved('chat_stream_events_total{event="start"}') == 1
    assert moved('chat_stream_events_total{event="done"}') == 1
    assert moved('chat_stream_duration_seconds_count{outcome="done"}') == 1
    assert moved("chat_time_to_first_token_seconds_count") == 1
    assert moved('chat_cache_requests_total{result="miss"}') == 1
    assert moved('chat_backend_streams_total{backend="demo"}') == 1
    route = 'method="GET",route="/chat/{message}"'
    assert moved(f"chat_http_request_duration_seconds_count{{{route}}}") == 1
    assert moved(f'chat_http_requests_total{{{route},status="200"}}') == 1
    assert after["chat_streams_active"] == 0
    assert after['chat_build_info{version="0.1.0"}'] == 1


def test_console_logs_are_lines_for_humans_without_secrets() -> None:
    token = make_token(sub="console-user")
    with running_service({"CHAT_LOG_FORMAT": "console"}, workers=1) as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            stream_chat(http, "GET", f"/chat/{SECRET_MESSAGE}", headers=bearer(token))
            http.get("/chat/x", headers={"Authorization": f"Bearer {token}x"})
        svc.wait_for_event("console-user", count=1)
        lines = list(svc.lines)
    text = "\n".join(lines)
    assert not any(line.startswith("{") for line in lines if line)  # not JSON
    assert "stream finished" in text and "console-user" in text
    assert SECRET_MESSAGE not in text
    assert token.split(".")[2] not in text
