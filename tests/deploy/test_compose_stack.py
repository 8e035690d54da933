"""deploy/compose.yaml for real: app, Redis and nginx brought up by podman-compose from the
image this run built, and used only through nginx's one published port, as a client would.

What the stack adds over the image alone is what these tests look at: nginx passing
streams through unbuffered, the compose network's addresses in CHAT_TRUSTED_PROXIES, the
key from a compose secret, what is published, the app's drain on `restart`, and Redis
keeping conversations (user data) across its own restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.sse import stream_chat
from tests.support.tokens import make_token

from .podman import Follower, Image, answers, inspect, names, podman, wait_until
from .stack import STACK_GRACE, Stack, running_stack

# The first test to ask for the image pays for the base images and the build: minutes on
# a new machine, where making the stand-ins alone takes one or two.
pytestmark = pytest.mark.timeout(900)

IP_LIMIT = 5
SETTINGS = {
    # Failed authentications per client address; small, so the address test reaches it.
    "CHAT_IP_RATE_LIMIT": f"{IP_LIMIT}/minute",
    # The demo at its real pace: thinking 2 s, then a character every 0.03 s.
    "CHAT_DEMO_DELAY_SCALE": "1",
}
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def stack(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(image, tmp_path_factory.mktemp("compose"), SETTINGS) as running:
        yield running


def _bearer(stack: Stack, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token(sub)}", **NO_CACHE}


def test_only_nginx_is_published(stack: Stack) -> None:
    """The app's ports and Redis's are reachable on the compose network alone; nginx's
    8080 is the one port on the host (here on loopback, by the test's override)."""
    published: dict[str, list[str]] = {}
    for service, name in stack.containers().items():
        bindings: dict[str, Any] = inspect(name)["HostConfig"]["PortBindings"] or {}
        published[service] = sorted(port for port, hosts in bindings.items() if hosts)
    assert published == {"app": [], "redis": [], "nginx": ["8080/tcp"]}


def test_every_service_turns_healthy(stack: Stack) -> None:
    """Each service's compose health check passes in its container: the app's on its
    metrics port, Redis's `redis-cli ping`, nginx's request through itself to the app."""
    for service in ("redis", "app", "nginx"):
        assert stack.healthy(service), f"{service} unhealthy:\n{stack.logs()}"


def test_the_app_runs_in_production_with_the_key_from_the_compose_secret(stack: Stack) -> None:
    """Production refuses to start without a key: the app is up, so it read the secret file
    as UID 10001, and a token it signs is accepted through nginx."""
    assert stack.exec("app", "printenv", "CHAT_ENV").strip() == "production"
    assert stack.exec("app", "id", "-u").strip() == "10001"
    response = httpx.get(stack.url + "/chat/streams/x", headers=_bearer(stack, "secret"))
    assert response.status_code == 404  # authenticated: an unknown stream, not a 401


def test_a_chat_through_nginx_arrives_as_the_app_sends_it(stack: Stack) -> None:
    """nginx in front of the app passes each event on as it comes: the thinking steps
    half a second apart, then the reply a character at a time, never one burst."""
    with httpx.Client(timeout=30) as client:
        stream = stream_chat(
            client, "GET", stack.url + "/chat/hello", headers=_bearer(stack, "paced")
        )
    assert stream.status == 200, stream.raw
    assert stream.names[0] == "start" and stream.names[-1] == "done"
    times = [event.at for event in stream.events]
    first_content = next(e.at for e in stream.events if e.name == "content")
    assert times[0] < 0.5, f"first event after {times[0]:.2f} s"
    assert first_content >= 1.5, "the thinking steps take 2 s"
    assert times[-1] - first_content >= 1.0, "content spread over the reply"
    assert len({int(t * 10) for t in times}) >= 20, "arrivals in many 100 ms slots"


def test_the_address_is_the_one_nginx_saw_never_one_the_client_wrote(stack: Stack) -> None:
    """Failed authentications spend a budget per client address. A client that writes a
    new X-Forwarded-For each time still spends one budget (nginx appends the address it
    saw, and the app takes nginx's entry); a client nginx saw elsewhere (inside nginx's
    own container) has a budget of its own, so the app does not take nginx's address
    for everyone's either."""
    bad = {"Authorization": f"Bearer {make_token(ttl=-600)}"}
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        statuses = [
            http.get("/chat/hi", headers={**bad, "X-Forwarded-For": f"198.51.100.{n}"})
            for n in range(IP_LIMIT + 1)
        ]
    assert [r.status_code for r in statuses] == [401] * IP_LIMIT + [429]
    elsewhere = stack.exec(
        "nginx",
        "curl",
        "--silent",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        "--header",
        f"Authorization: {bad['Authorization']}",
        "http://127.0.0.1:8080/chat/hi",
    )
    assert elsewhere == "401"


def test_conversations_outlive_a_restart_of_redis(stack: Stack) -> None:
    """A conversation written through the app is read back after Redis restarted: its
    append-only file on the named volume held it (the earlier tmpfs lost it)."""
    conversation = uuid.uuid4().hex
    headers = _bearer(stack, "remembered")
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        stream = stream_chat(
            http,
            "POST",
            "/chat",
            headers=headers,
            json={"message": "remember this", "conversation_id": conversation},
        )
        assert stream.names[-1] == "done", stream.raw[-300:]
        before = http.get(f"/conversations/{conversation}", headers=headers).json()
        assert [m["role"] for m in before["messages"]] == ["user", "assistant"]
        redis = stack.container("redis")
        started = inspect(redis)["State"]["StartedAt"]

        stack.compose("restart", "redis")

        assert inspect(redis)["State"]["StartedAt"] != started, "Redis did not restart"
        wait_until(lambda: stack.healthy("redis"), "Redis healthy again")
        wait_until(
            lambda: http.get(f"/conversations/{conversation}", headers=headers).status_code == 200,
            "the conversation served again",
        )
        after = http.get(f"/conversations/{conversation}", headers=headers).json()
    assert after == before


def test_a_restart_of_the_app_drains_its_streams_then_serves_again(stack: Stack) -> None:
    """`restart app` mid-stream: the stream through nginx goes on for the app's
    CHAT_GRACEFUL_TIMEOUT and then ends with the `shutdown` error event; the restarted
    app is reached through the same nginx."""
    headers = _bearer(stack, "restarted")
    follower = Follower(
        "POST", stack.url + "/chat", headers, {"message": "Tell me a long story. " * 20}
    ).start()
    follower.wait_for("content")
    app = stack.container("app")
    started = inspect(app)["State"]["StartedAt"]
    restarting = time.monotonic()

    stack.compose("restart", "app")

    events = follower.finish()
    assert follower.status == 200
    assert events[-1].name == "error", names(events)[-5:]
    assert events[-1].data["code"] == "shutdown"
    ended = events[-1].at - restarting
    assert STACK_GRACE - 0.5 <= ended <= STACK_GRACE + 3, f"shutdown after {ended:.2f} s"
    assert inspect(app)["State"]["StartedAt"] != started
    # Promptly: nginx must not hold on to where the app was before (its address, or the
    # MAC address it had there).
    wait_until(lambda: answers(stack.url + "/readyz"), "the restarted app ready through nginx", 15)
    with httpx.Client(timeout=30) as client:
        again = stream_chat(client, "GET", stack.url + "/chat/again", headers=headers)
    assert again.names[-1] == "done", again.raw[-300:]
    assert podman("inspect", "--format", "{{.State.Running}}", app).stdout.strip() == "true"
