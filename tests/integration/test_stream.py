"""The SSE stream over real HTTP: event order and fields, ids, headers, text, pacing.

The demo's words are written out here, not imported from the code under test: a changed
reply must turn these red, not change what they expect.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from urllib.parse import quote

import httpx
import pytest

from tests.support.demo_text import THINKING, demo_reply
from tests.support.service import Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer


def test_events_come_in_the_contract_order_with_ids_and_fields(client: httpx.Client) -> None:
    stream = stream_chat(client, "GET", "/chat/hello", headers=bearer())

    assert stream.status == 200
    names = stream.names
    assert names[0] == "start" and names[-1] == "done"
    assert names[1:5] == ["thinking"] * 4
    assert set(names[5:-1]) == {"content"}
    stream_id = stream.headers["x-stream-id"]
    assert len(stream_id) >= 22  # 128 random bits, URL-safe
    assert [e.id for e in stream.events] == [f"{stream_id}:{i}" for i in range(1, len(names) + 1)]
    assert stream.events[0].data == {"message": "connected", "stream": stream_id}
    assert [e.data["step"] for e in stream.events[1:5]] == THINKING
    assert stream.events[0].data["message"] == "connected"
    assert stream.events[-1].data["reason"] == "complete"
    assert stream.text == "You said: hello. This is a complete AI chat demo, with streaming output!"


def test_wire_format_is_exact(client: httpx.Client) -> None:
    stream = stream_chat(client, "GET", "/chat/hi", headers=bearer())

    sid = stream.headers["x-stream-id"].encode()
    assert stream.raw.startswith(
        b'id: %s:1\nevent: start\ndata: {"message":"connected","stream":"%s"}\n\n' % (sid, sid)
    )
    assert b'id: %s:6\nevent: content\ndata: {"text":"Y"}\n\n' % sid in stream.raw
    assert stream.raw.endswith(b"\n\n")


def test_a_reply_made_at_once_goes_out_in_a_few_writes_not_one_an_event(
    service: Service,
) -> None:
    """The shared service has no demo pauses: a generation appends its events in one turn
    of the loop, and its waiting stream writes them together at the end of that turn, as
    chunks of the chunked body (here counted on the socket), not a chunk an event."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        token = bearer()["Authorization"]
        sock.sendall(
            b"GET /chat/in-one-go HTTP/1.1\r\nhost: x\r\nauthorization: %s\r\n"
            b"connection: close\r\n\r\n" % token.encode()
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        chunks.append(rest[: int(size, 16)])
        body = rest[int(size, 16) + 2 :]
    events = b"".join(chunks).count(b"\n\n")
    assert events > 80  # start, thinking, about 70 content, done
    assert chunks[-1] == b""  # the end of the body
    assert len(chunks) <= 6, [c.count(b"\n\n") for c in chunks]


def test_sse_headers(client: httpx.Client) -> None:
    stream = stream_chat(
        client, "GET", "/chat/hi", headers={**bearer(), "Accept-Encoding": "gzip, br"}
    )

    headers = stream.headers
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-cache"] in ("HIT", "MISS")
    assert "connection" not in headers  # illegal under HTTP/2 (RFC 9113 §8.2.2)
    assert "content-encoding" not in headers
    assert len(headers["x-request-id"]) >= 1
    assert "auth;dur=" in headers["server-timing"]
    assert "limits;dur=" in headers["server-timing"]
    assert "cache;dur=" in headers["server-timing"]


@pytest.mark.parametrize("message", ["你好，世界", "emoji 🎉👍🏽 ok", "mixed 中文 and ✨"])
def test_chinese_and_emoji_come_back_intact_by_get_and_post(
    client: httpx.Client, message: str
) -> None:
    by_get = stream_chat(client, "GET", f"/chat/{quote(message)}", headers=bearer())
    by_post = stream_chat(client, "POST", "/chat", json={"message": message}, headers=bearer())

    assert by_get.text == demo_reply(message)
    assert by_post.text == demo_reply(message)
    assert b"\\u" not in by_post.raw  # raw UTF-8 on the wire, not \\u escapes
    assert message[0].encode() in by_post.raw


def test_post_with_the_examples_body(client: httpx.Client) -> None:
    stream = stream_chat(
        client,
        "POST",
        "/chat",
        content=json.dumps({"message": "hello"}),
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert stream.status == 200
    assert stream.names[-1] == "done"


def test_events_arrive_incrementally_at_the_demo_pace() -> None:
    """Delays on (scale 1): thinking at once, first content at about 2.0 s, the rest spread."""
    with (
        running_service({"CHAT_DEMO_DELAY_SCALE": "1"}, workers=1) as svc,
        httpx.Client(base_url=svc.url, timeout=30) as http,
    ):
        stream = stream_chat(http, "GET", "/chat/hi", headers=bearer())

    first_content = next(e for e in stream.events if e.name == "content")
    assert stream.events[0].at < 0.5
    assert stream.events[1].at < 0.5
    assert 1.9 <= first_content.at < 2.6
    contents = [e.at for e in stream.events if e.name == "content"]
    # 0.03 s apart: the whole reply takes about n * 0.03 s, not one burst at the end.
    assert contents[-1] - contents[0] >= (len(contents) - 1) * 0.03 * 0.9
    assert stream.names[-1] == "done"


def test_get_root_streams_plain_text_to_curl(client: httpx.Client) -> None:
    response = client.get("/", headers={"Accept": "*/*"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "Server-Sent Events" in response.text


def test_get_root_serves_the_page_to_browsers(client: httpx.Client) -> None:
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = client.get("/", headers={"Accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<html" in response.text.lower()


PLAIN_TEXT = (
    "This is a complete AI chat demo!\n"
    "It supports:\n"
    "1. Server-Sent Events (SSE)\n"
    "2. Streaming output, character by character\n"
    "3. Visible thinking steps\n"
    "4. A complete chat interface\n\n"
    "Try sending it any message!\n"
)


def test_get_root_streams_the_demo_text_a_character_at_a_time_at_its_pace() -> None:
    """0.02 s per character, scaled: at 0.5 about 2.2 s for the text, in many pieces."""
    with (
        running_service({"CHAT_DEMO_DELAY_SCALE": "0.5"}, workers=1) as svc,
        httpx.Client(base_url=svc.url, timeout=30) as http,
        http.stream("GET", "/", headers={"Accept": "*/*"}) as response,
    ):
        started = time.monotonic()
        arrivals, text = [], b""
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
            text += chunk
    assert text.decode() == PLAIN_TEXT
    expected = len(PLAIN_TEXT) * 0.02 * 0.5
    assert expected * 0.9 <= arrivals[-1] <= expected + 1.5, (arrivals[-1], expected)
    assert len(arrivals) >= len(PLAIN_TEXT) // 2  # in pieces, not one burst


def test_an_idle_stream_gets_a_ping_every_interval() -> None:
    """Thinking steps are 0.5 s apart (scale 1); with pings every 0.2 s, each pause holds
    pings, and none comes while events flow faster than that."""
    env = {"CHAT_DEMO_DELAY_SCALE": "1", "CHAT_SSE_PING_SECONDS": "0.2"}
    with (
        running_service(env, workers=1) as svc,
        httpx.Client(base_url=svc.url, timeout=30) as http,
        http.stream("GET", "/chat/ping-me", headers=bearer()) as response,
    ):
        started = time.monotonic()
        pings, raw = [], b""
        for chunk in response.iter_raw():
            raw += chunk
            pings += [time.monotonic() - started] * chunk.count(b": ping\n\n")
    thinking_time = 4 * 0.5  # the first content comes after four 0.5 s pauses
    during_thinking = [t for t in pings if t < thinking_time]
    # One interval to notice the silence, then one each interval: at least one per pause.
    assert len(during_thinking) >= 4, pings
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(during_thinking)), pings
    assert raw.endswith(b"\n\n") and b"event: done" in raw
