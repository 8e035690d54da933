"""podman for the container tests: the image built once from the repository's Dockerfile,
containers run as an operator runs them, and a reader that follows a stream while the
test stops what serves it.

Every podman call goes through `podman()`, with the project's containers.conf (runtime,
ulimits, network backend) and a time limit. Containers and compose projects get names of
their own (`chat-test-...`) and are removed by those names when a test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.sse import parse

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
# The tag of the image each run builds (the session fixture `image`).
IMAGE = "localhost/chat-service:test"
# The label scripts/base-images.sh puts on a stand-in, which an image built on one inherits.
STAND_IN_LABEL = "chat-service.stand-in"

INSTALL_HINT = (
    "the container tests need podman (apt-get install podman runc netavark aardvark-dns "
    "mmdebstrap) and podman-compose (the dev lock); ./scripts/test.sh installs both"
)


def executable(name: str) -> str:
    """A tool from this interpreter's scripts (podman-compose) or PATH; missing fails."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"`{name}` not found: {INSTALL_HINT}", pytrace=False)
    return found


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, timeout: float = 120, check: bool = True, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; with `check`, a failure fails the test with podman's output."""
    result = subprocess.run(
        [executable("podman"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=podman_env(),
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result


def inspect(name: str, kind: str = "container") -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman(kind, "inspect", name).stdout)
    return data[0]


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 60, interval: float = 0.2
) -> float:
    """Poll `condition` until it holds (seconds it took); fail naming `what` at the deadline."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s", pytrace=False)
        time.sleep(interval)
    return time.monotonic() - started


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.TransportError:
        return False


def unique_name() -> str:
    return f"chat-test-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Image:
    name: str
    size: int  # bytes, as podman reports it
    layers: int
    stand_in: str  # the stand-in key of its base, or "" on the official base
    build_seconds: float
    base_images_seconds: float


def build_image() -> Image:
    """The base images (scripts/base-images.sh: the official ones, or local stand-ins), then
    the repository's Dockerfile, unchanged, with `--pull=never` and Docker's image format
    (OCI, podman's default, drops HEALTHCHECK)."""
    started = time.monotonic()
    bases = subprocess.run(
        ["bash", str(REPO / "scripts" / "base-images.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env=podman_env(),
        check=False,
    )
    assert bases.returncode == 0, f"scripts/base-images.sh:\n{bases.stdout}{bases.stderr}"
    made = time.monotonic()
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout.strip()
    podman(
        "build",
        "--pull=never",
        "--format=docker",
        "--file",
        str(REPO / "Dockerfile"),
        "--tag",
        IMAGE,
        str(REPO),
        timeout=900,
    )
    built = time.monotonic()
    info = inspect(IMAGE, "image")
    if before and before != info["Id"]:
        # The previous run's image, untagged now: its layers are no cache for anything.
        podman("rmi", before, check=False)
    labels = info["Config"].get("Labels") or {}
    return Image(
        name=IMAGE,
        size=int(info["Size"]),
        layers=len(info["RootFS"]["Layers"]),
        stand_in=labels.get(STAND_IN_LABEL, ""),
        build_seconds=built - made,
        base_images_seconds=made - started,
    )


@dataclass
class Container:
    name: str
    url: str  # the HTTP port (8000), published on 127.0.0.1
    metrics_url: str  # the metrics port (9090), published on 127.0.0.1

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    def token(self, sub: str) -> str:
        """A token from `chat-service token` run inside the container, with its key."""
        lines = self.exec("chat-service", "token", "--sub", sub).split()
        assert len(lines) == 1, f"`chat-service token` printed {lines!r}"
        return lines[0]

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr


def published(name: str, port: int) -> str:
    """The 127.0.0.1 address podman published a container's `port` on, as a URL."""
    address = podman("port", name, f"{port}/tcp").stdout.split()[0]
    return f"http://{address}"


# What every container of these tests runs with, as the Helm chart runs the pod: a
# read-only root, a tmpfs /tmp, no capabilities, no privilege escalation.
HARDENED = (
    "--read-only",
    "--tmpfs=/tmp:rw,size=64m,mode=1777",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)


@contextmanager
def running_container(image: Image, env: dict[str, str]) -> Iterator[Container]:
    """The image run hardened, its two ports published on loopback ports podman picks, until
    `/healthz` answers; removed (with whatever it holds) when the block ends."""
    name = unique_name()
    podman(
        "run",
        "--detach",
        "--name",
        name,
        *HARDENED,
        "--publish=127.0.0.1::8000",
        "--publish=127.0.0.1::9090",
        *(f"--env={key}={value}" for key, value in env.items()),
        image.name,
    )
    try:
        container = Container(name, published(name, 8000), published(name, 9090))

        def up() -> bool:
            state = inspect(name)["State"]
            if not state["Running"]:
                pytest.fail(f"{name} exited:\n{container.logs()}", pytrace=False)
            return answers(container.url + "/healthz")

        wait_until(up, f"{name} serving /healthz")
        yield container
    finally:
        podman("rm", "--force", "--time=0", name, check=False)


@dataclass
class Event:
    name: str
    data: Any
    at: float  # time.monotonic() when it arrived


@dataclass
class Follower:
    """Reads one SSE response in a thread of its own, so the test can act mid-stream."""

    method: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any] | None = None
    status: int | None = None
    events: list[Event] = field(default_factory=list)
    error: BaseException | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=120)) as client,
                client.stream(self.method, self.url, headers=self.headers, json=self.body) as r,
            ):
                self.status = r.status_code
                buffer = b""
                for chunk in r.iter_raw():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        for kind, fields in parse(block + b"\n\n"):
                            if kind == "event":
                                event = Event(
                                    fields["event"], json.loads(fields["data"]), time.monotonic()
                                )
                                with self._changed:
                                    self.events.append(event)
                                    self._changed.notify_all()
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error
        finally:
            with self._changed:
                self._changed.notify_all()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait_for(self, name: str, timeout: float = 30) -> Event:
        """The first event called `name`, once it has arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events if e.name == name), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.done:
                    pytest.fail(
                        f"no `{name}` event (status {self.status}, error {self.error!r}, "
                        f"events {[e.name for e in self.events][-5:]})",
                        pytrace=False,
                    )
                self._changed.wait(remaining)

    def finish(self, timeout: float = 60) -> list[Event]:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream was still open after {timeout} s"
        return self.events


def names(events: Sequence[Event]) -> list[str]:
    return [event.name for event in events]
