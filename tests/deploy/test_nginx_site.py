"""deploy/nginx: `nginx -t` accepts the site, and the real nginx, run with the repository's
own site and upstream files in front of a small scripted upstream, behaves as the SSE
routes need. The scripted upstream shows what nginx itself does (it sends no
X-Accel-Buffering, so only the site's own settings can unbuffer the stream) and echoes the
request headers nginx passes on; test_nginx_stream.py does the same against the service."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .tools import NGINX_DIR, nginx_site, nginx_test, nginx_upstream, running_nginx

EVENTS = 6
EVENT_GAP = 0.3  # seconds between the scripted upstream's events


class ScriptedUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.startswith("/chat/"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for number in range(EVENTS):
                self._chunk(b'id: %d\nevent: content\ndata: {"text": "x"}\n\n' % number)
                time.sleep(EVENT_GAP)
            self._chunk(b'event: done\ndata: {"reason": "complete"}\n\n')
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/echo":
            self._send(200, "application/json", json.dumps(dict(self.headers.items())).encode())
        elif self.path == "/static/app.css":
            self._send(200, "text/css", b"body { color: black; }\n" * 400)
        else:  # /metrics and anything else: the upstream would answer, nginx must not ask
            self._send(200, "text/plain", b"upstream answered " + self.path.encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self._send(200, "application/json", json.dumps({"received": length}).encode())


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedUpstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def nginx_url(upstream_port: int) -> Iterator[str]:
    with running_nginx(upstream_port) as nginx:
        yield nginx.url


def arrival_times(url: str, path: str, headers: dict[str, str] | None = None) -> list[float]:
    """Seconds after the request at which each SSE event arrived (decompressed if the
    response is gzipped)."""
    times: list[float] = []
    started = time.monotonic()
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", url + path, headers=headers) as response,
    ):
        assert response.status_code == 200
        buffer = ""
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                _, buffer = buffer.split("\n\n", 1)
                times.append(time.monotonic() - started)
    return times


def test_nginx_accepts_the_site() -> None:
    """The site exactly as committed (listen 8080), with only the upstream host resolvable
    here instead of compose's `app`."""
    result = nginx_test(nginx_site(), nginx_upstream(8000))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_site_settings_for_streams() -> None:
    site = (NGINX_DIR / "chat-service.conf").read_text()
    chat = re.search(r"location /chat \{(.*?)\n    \}", site, re.S)
    assert chat, "a `location /chat` block"
    for setting in ("proxy_buffering off;", "proxy_cache off;", "gzip off;"):
        assert setting in chat[1]
    timeout = re.search(r"proxy_read_timeout (\d+)s;", chat[1])
    assert timeout and int(timeout[1]) >= 3600
    assert "proxy_http_version 1.1;" in site
    assert 'proxy_set_header Connection "";' in site
    assert "client_max_body_size 64k;" in site
    gzip_types = re.search(r"gzip_types ([^;]*);", site)
    assert gzip_types, "gzip_types names what may be compressed"
    assert not {"text/event-stream", "text/plain"} & set(gzip_types[1].split())
    assert not re.search(r"add_header\s+Connection", site, re.I)
    assert re.search(r"keepalive \d+;", (NGINX_DIR / "upstream.conf").read_text())


def test_events_pass_through_as_they_come(nginx_url: str) -> None:
    times = arrival_times(nginx_url, "/chat/hello")
    assert len(times) == EVENTS + 1
    assert times[0] < 0.5, f"first event after {times[0]:.2f} s"
    # Spread like the upstream sent them, not delivered together at the end.
    assert times[-1] - times[0] >= (EVENTS - 1) * EVENT_GAP * 0.8, times


def test_without_the_stream_settings_events_would_bunch(upstream_port: int) -> None:
    """The mutation the test above must catch. With proxy_buffering on, nginx does not flush
    each chunk through its output filters, so a filter that buffers holds the events back:
    here gzip, let at the stream by dropping `proxy_buffering off;` and `gzip off;` and
    adding text/event-stream to gzip_types. (Any one of the three keeps events flowing on
    its own; the site has all of them, so no single edit breaks streaming.)"""

    def buffer_and_compress(site: str) -> str:
        site = site.replace(
            "        proxy_buffering off;\n        proxy_cache off;\n        gzip off;\n",
            "        proxy_cache off;\n",
            1,
        )
        return site.replace("gzip_types text/css", "gzip_types text/event-stream text/css")

    with running_nginx(upstream_port, edit=buffer_and_compress) as nginx:
        times = arrival_times(nginx.url, "/chat/hello", {"Accept-Encoding": "gzip"})
    assert len(times) == EVENTS + 1
    assert times[0] >= (EVENTS - 1) * EVENT_GAP * 0.8, times


def test_event_streams_are_never_compressed_but_assets_are(nginx_url: str) -> None:
    headers = {"Accept-Encoding": "gzip"}
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", nginx_url + "/chat/hello", headers=headers) as response:
            assert response.headers["content-type"] == "text/event-stream"
            assert "content-encoding" not in response.headers
            response.read()
        asset = client.get(nginx_url + "/static/app.css", headers=headers)
        assert asset.headers.get("content-encoding") == "gzip"
        assert asset.text.startswith("body")


def test_metrics_are_not_served(nginx_url: str) -> None:
    for path in ("/metrics", "/metrics/", "/metrics?name[]=chat_build_info"):
        response = httpx.get(nginx_url + path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "Not Found"}
        assert "upstream answered" not in response.text


def test_forwarding_headers_reach_the_app(nginx_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        echoed = client.get(nginx_url + "/echo", headers={"X-Request-ID": "abc-123"}).json()
        assert echoed["X-Request-ID"] == "abc-123"
        assert echoed["X-Forwarded-For"] == "127.0.0.1"
        assert echoed["X-Forwarded-Proto"] == "http"
        # HTTP/1.1 keep-alive to the app: nginx sends no `Connection: close`.
        assert "Connection" not in echoed
        generated = client.get(nginx_url + "/echo").json()["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), "nginx's $request_id when none is sent"


def test_request_bodies_are_capped_at_64k_with_a_json_error(nginx_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        small = client.post(nginx_url + "/chat", content=b"x" * 60_000)
        assert small.status_code == 200 and small.json() == {"received": 60_000}
        large = client.post(nginx_url + "/chat", content=b"x" * 70_000)
        assert large.status_code == 413
        assert large.json() == {"detail": "request body too large"}


def test_no_connection_header_over_http2(upstream_port: int) -> None:
    """Connection is hop-by-hop and illegal in HTTP/2 (RFC 9113, 8.2.2): through an HTTP/2
    front end, the response must not carry one. (Over HTTP/1.1 nginx writes its own
    `Connection: keep-alive` for the client hop; nothing is added on top of it.)"""
    with running_nginx(upstream_port) as nginx:
        with (
            httpx.Client(http1=False, http2=True, timeout=30) as client,
            client.stream("GET", nginx.h2_url + "/chat/hello") as response,
        ):
            assert response.http_version == "HTTP/2"
            assert "connection" not in response.headers
            response.read()
        response = httpx.get(nginx.url + "/echo", timeout=30)
        assert response.headers.get_list("connection") == ["keep-alive"]


def test_unreachable_app_gives_a_json_503() -> None:
    with running_nginx(1) as nginx:  # nothing listens on port 1
        response = httpx.get(nginx.url + "/healthz", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"detail": "chat-service is unavailable"}
    assert response.headers["retry-after"] == "5"
