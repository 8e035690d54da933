"""The image for real: built from the repository's Dockerfile with podman (once per run, the
session fixture `image`) and run as the Helm chart runs it: UID 10001, read-only root, tmpfs
/tmp, no capabilities, no privilege escalation. What a container changes is what these
tests look at: the user, the root filesystem, PID 1 receiving SIGTERM, the HEALTHCHECK,
the metrics port.

Before, the Dockerfile was linted and its command run outside any container; the image
itself had never been built or run by the tests."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sse import stream_chat

from .podman import (
    Container,
    Follower,
    Image,
    inspect,
    names,
    podman,
    running_container,
)
from .tools import GUNICORN_KILL_MARGIN

# The first test to ask for the image pays for the base images and the build: minutes on
# a new machine, where making the stand-ins alone takes one or two.
pytestmark = pytest.mark.timeout(900)

PRODUCTION = {"CHAT_ENV": "production", "CHAT_JWT_SECRET": secrets.token_urlsafe(48)}
# The Dockerfile's own stage names its base; the runtime stage starts FROM this one.
RUNTIME_BASE = "docker.io/library/python:3.11-slim-bookworm"
GRACE = 3


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[Container]:
    """One container in production mode, demo delays off, for the tests that only read."""
    with running_container(image, {**PRODUCTION, "CHAT_DEMO_DELAY_SCALE": "0"}) as running:
        yield running


def _status(container: Container) -> dict[str, str]:
    """PID 1's /proc status lines, as the kernel sees the process."""
    lines = container.exec("cat", "/proc/1/status").splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_the_image_adds_three_small_layers_to_the_slim_base(image: Image) -> None:
    """On the slim Python base, the image adds the user, the locked dependencies and the
    project, one layer each: no wheels, compilers or caches come along (those would show
    as more layers or more megabytes)."""
    base = inspect(RUNTIME_BASE, "image")
    added_layers = image.layers - len(base["RootFS"]["Layers"])
    added_bytes = image.size - int(base["Size"])
    print(f"{image.name}: {image.size / 1e6:.0f} MB in {image.layers} layers")
    assert added_layers == 3
    assert added_bytes < 100e6, f"the image adds {added_bytes / 1e6:.0f} MB to its base"
    info = inspect(image.name, "image")
    assert info["Config"]["User"] == "10001:10001"
    # podman lists it beside Config; an OCI-format build would have dropped it.
    assert info["Healthcheck"]["Test"][0] == "CMD", "docker format keeps the HEALTHCHECK"


def test_it_runs_as_10001_on_a_read_only_root_without_capabilities(container: Container) -> None:
    """What the kernel says of PID 1 (gunicorn, started by `chat-service serve`), not what
    podman was asked: its user and group, no capability in any set, no_new_privs; the root
    filesystem refuses writes and /tmp is a tmpfs."""
    status = _status(container)
    assert status["Uid"].split() == ["10001"] * 4
    assert status["Gid"].split() == ["10001"] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, f"{capabilities}: {status[capabilities]}"
    assert status["NoNewPrivs"] == "1"
    command = container.exec("cat", "/proc/1/cmdline").replace("\0", " ")
    assert "chat-service serve" in command, command
    mounts = {
        fields[1]: fields
        for fields in (line.split() for line in container.exec("cat", "/proc/mounts").splitlines())
    }
    assert "ro" in mounts["/"][3].split(",")
    assert mounts["/tmp"][2] == "tmpfs" and "rw" in mounts["/tmp"][3].split(",")
    write = podman("exec", container.name, "touch", "/usr/local/lib/written", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_it_serves_a_chat_with_a_token_made_inside_it_and_writes_only_to_tmp(
    container: Container,
) -> None:
    """`chat-service token` inside the container signs with the key the server was given;
    the chat streams to `done`; afterwards podman finds no change to the container's own
    filesystem, and what the service wrote (the workers' metrics) is in /tmp."""
    token = container.token("container-test")
    with httpx.Client(timeout=30) as client:
        stream = stream_chat(
            client,
            "GET",
            container.url + "/chat/hello",
            headers={"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"},
        )
    assert stream.status == 200, stream.raw
    assert stream.names[0] == "start" and stream.names[-1] == "done"
    assert stream.text.startswith("You said: hello.")
    assert podman("diff", container.name).stdout.strip() == ""
    assert container.exec("find", "/tmp", "-mindepth", "1", "-maxdepth", "1").split()


def test_its_healthcheck_turns_healthy(container: Container) -> None:
    """The Dockerfile's HEALTHCHECK, run by podman inside the container (podman schedules it
    with systemd timers, which a machine without systemd lacks: `healthcheck run` is what
    those timers run)."""
    result = podman("healthcheck", "run", container.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert inspect(container.name)["State"]["Health"]["Status"] == "healthy"


def test_metrics_answer_on_9090_only_beside_the_probes(container: Container) -> None:
    """The image sets CHAT_METRICS_PORT=9090: Prometheus scrapes there, and the public port
    has no /metrics; the probes answer on both."""
    metrics = httpx.get(container.metrics_url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    assert re.search(r"^chat_build_info\{", metrics.text, re.M)
    assert httpx.get(container.url + "/metrics", timeout=10).status_code == 404
    for probe in ("/healthz", "/readyz"):
        assert httpx.get(container.metrics_url + probe, timeout=10).status_code == 200
        assert httpx.get(container.url + probe, timeout=10).status_code == 200


def test_podman_stop_mid_stream_drains_then_ends_the_stream_with_shutdown(image: Image) -> None:
    """`podman stop` sends SIGTERM to PID 1: the open stream goes on for
    CHAT_GRACEFUL_TIMEOUT, then ends with the `shutdown` error event (so the client
    retries), and the container exits 0 well before podman's own deadline, unkilled."""
    env = {**PRODUCTION, "CHAT_GRACEFUL_TIMEOUT": str(GRACE), "CHAT_DEMO_DELAY_SCALE": "1"}
    with running_container(image, env) as container:
        token = container.token("stopped")
        # About 15 s of reply at the demo's pace (0.03 s a character): far past the grace.
        message = "Tell me a long story. " * 20
        follower = Follower(
            "POST",
            container.url + "/chat",
            {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"},
            {"message": message},
        ).start()
        follower.wait_for("content")
        stopping = time.monotonic()
        podman("stop", "--time=30", container.name, timeout=60)
        stopped = time.monotonic() - stopping
        events = follower.finish()
        state = inspect(container.name)["State"]
    assert follower.status == 200
    assert events[-1].name == "error", names(events)[-5:]
    assert events[-1].data["code"] == "shutdown"
    ended = events[-1].at - stopping
    assert GRACE - 0.5 <= ended <= GRACE + 2.5, f"shutdown event {ended:.2f} s after SIGTERM"
    during = [e for e in events if e.name == "content" and stopping < e.at < events[-1].at]
    assert len(during) > 10, "the stream went on while the server drained"
    assert stopped < GRACE + GUNICORN_KILL_MARGIN + 2, f"podman stop took {stopped:.1f} s"
    assert state["ExitCode"] == 0, json.dumps(state)
