"""Bad input gets a clear JSON error and the right status, never a 500."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.service import Service
from tests.support.tokens import bearer


def _detail(response: httpx.Response) -> object:
    assert response.headers["content-type"] == "application/json"
    return response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"message": ""},
        {"message": "   \n\t "},
        {"message": "x" * 4001},
        {"message": 42},
        {"message": None},
        {"text": "no message field"},
        [],
        "just a string",
        {"message": "ok", "conversation_id": "has spaces and / slashes"},
        # `:` is the key scheme's separator: `x` then `x:turns` once met in Redis.
        {"message": "ok", "conversation_id": "x:turns"},
    ],
    ids=[
        "empty",
        "whitespace",
        "too-long",
        "number",
        "null",
        "missing",
        "list",
        "string",
        "bad-id",
        "colon-id",
    ],
)
def test_bad_messages_get_422(client: httpx.Client, body: object) -> None:
    response = client.post("/chat", json=body, headers=bearer())

    assert response.status_code == 422
    assert _detail(response)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_conversation_id_with_a_colon_gets_422(client: httpx.Client, method: str) -> None:
    """Before, `GET /conversations/x:turns` answered 200 for a conversation never made (it
    read another conversation's turns key)."""
    response = client.request(method, "/conversations/x:turns", headers=bearer())

    assert response.status_code == 422
    assert _detail(response)


@pytest.mark.parametrize("path", ["/chat/streams/a%2Fb", "/chat/streams/a/b", "/chat/streams/"])
def test_what_is_not_a_stream_id_under_streams_is_a_404_not_a_chat(
    service: Service, client: httpx.Client, path: str
) -> None:
    """Before, `/chat/streams/a%2Fb` (decoded before routing) fell through to
    `/chat/{message}`: a new chat about `streams/a/b`, its budget spent."""
    before = metric(service.url, "chat_backend_streams_total", '{backend="demo"}')
    for method in ("GET", "DELETE"):
        response = client.request(method, path, headers=bearer())
        assert response.status_code == 404
        assert _detail(response) == "stream not found"
    assert metric(service.url, "chat_backend_streams_total", '{backend="demo"}') == before


def test_invalid_json_gets_422(client: httpx.Client) -> None:
    response = client.post(
        "/chat",
        content=b'{"message": "unterminated',
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert _detail(response)


def test_a_message_of_exactly_the_limit_is_accepted(client: httpx.Client) -> None:
    response = client.post("/chat", json={"message": "x" * 4000}, headers=bearer())

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/chat/%20%20", "/chat/" + "y" * 4001])
def test_bad_path_messages_get_422(client: httpx.Client, path: str) -> None:
    response = client.get(path, headers=bearer())

    assert response.status_code == 422
    assert _detail(response)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_gets_415(client: httpx.Client, content_type: str | None) -> None:
    headers = bearer()
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/chat", content=b"message=hi", headers=headers)

    assert response.status_code == 415
    assert _detail(response)


def _post_head(extra: str) -> bytes:
    return (
        f"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {bearer()['Authorization']}\r\n{extra}\r\n"
    ).encode()


def _answer(sock: socket.socket) -> bytes:
    """What the server sends, read until the head and its JSON body are in."""
    sock.settimeout(5)  # a server waiting for the rest of the body would never answer
    received = b""
    while b"}" not in received.partition(b"\r\n\r\n")[2]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_an_oversized_body_gets_413_from_its_declared_length(service: Service) -> None:
    """Only the head and a few bytes are sent: the answer comes from the declared length,
    before any more of the body (which never comes) could be read."""
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(_post_head("Content-Length: 10000000\r\n") + b'{"message": "')
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"detail"' in answer


def test_an_oversized_chunked_body_gets_413_before_it_is_read_whole(service: Service) -> None:
    """No length declared: the service counts as it reads, and answers once past the bound,
    while the body has not ended (its last chunk is never sent)."""
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(_post_head("Transfer-Encoding: chunked\r\n"))
        for _ in range(70):
            sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"detail"' in answer


def test_unknown_routes_and_methods_are_json(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert _detail(client.get("/nope"))
    response = client.put("/chat", json={"message": "hi"}, headers=bearer())
    assert response.status_code == 405
    assert _detail(response)


def test_request_id_is_echoed_when_valid_and_replaced_when_not(client: httpx.Client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123._X"}).headers["x-request-id"]
        == "abc-123._X"
    )
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id!"}).headers["x-request-id"]
    assert replaced != "bad id!" and len(replaced) == 32
    too_long = client.get("/healthz", headers={"X-Request-ID": "a" * 129}).headers["x-request-id"]
    assert too_long != "a" * 129
    assert client.get("/nope").headers["x-request-id"]
    assert "total;dur=" in client.get("/healthz").headers["server-timing"]


def test_health_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/chat" in spec["paths"] and "/chat/{message}" in spec["paths"]
    assert client.get("/docs").status_code == 200
