"""deploy/compose.yaml brought up by a real compose implementation (podman-compose), as an
operator brings it up: the file as it is, in a directory of its own with the key in
secrets/jwt-secret and settings in chat-service.env, plus an override file with what only
the tests change. Torn down with its volumes, and swept by its project label."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .podman import REPO, Image, answers, executable, podman, podman_env, unique_name, wait_until

DEPLOY = REPO / "deploy"
# The drain the stack's app gets in the tests (compose.yaml says 60 s for real use).
STACK_GRACE = 3

# What the tests change, merged over compose.yaml as Docker Compose merges an override
# file: the image this run built (never a build of compose's own), a short drain, and
# nginx on a loopback port podman picks instead of every address's 8080.
OVERRIDE = """\
services:
  app:
    image: {image}
    environment:
      CHAT_GRACEFUL_TIMEOUT: "{grace}"
  nginx:
    ports: !override
      - "127.0.0.1::8080"
"""


@dataclass
class Stack:
    project: str
    directory: Path
    url: str = ""  # nginx, the one published port

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [
            executable("podman-compose"),
            "--project-name",
            self.project,
            "--file",
            "compose.yaml",
            "--file",
            "compose.test.yaml",
            *args,
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            env=podman_env(),
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"podman-compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )
        return result

    def containers(self) -> dict[str, str]:
        """Service name -> container name, from the labels podman-compose sets."""
        listed = podman(
            "ps",
            "--all",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
            "--format",
            '{{.Names}} {{index .Labels "io.podman.compose.service"}}',
        ).stdout
        return {service: name for name, service in (line.split() for line in listed.splitlines())}

    def container(self, service: str) -> str:
        return self.containers()[service]

    def exec(self, service: str, *command: str) -> str:
        return podman("exec", self.container(service), *command).stdout

    def token(self, sub: str) -> str:
        """A token from `chat-service token` in the app container, signed with the key it
        read from the compose secret."""
        (token,) = self.exec("app", "chat-service", "token", "--sub", sub).split()
        return token

    def healthy(self, service: str) -> bool:
        """The service's compose health check, run now by podman in its container."""
        return podman("healthcheck", "run", self.container(service), check=False).returncode == 0

    def logs(self) -> str:
        return "\n".join(
            f"--- {service}\n" + podman("logs", "--tail=30", name, check=False).stderr
            for service, name in self.containers().items()
        )


def _sweep(project: str) -> None:
    """Whatever `down` left of a project, removed by its label and names."""
    label = f"label=io.podman.compose.project={project}"
    ids = podman("ps", "--all", "--quiet", "--filter", label, check=False).stdout.split()
    if ids:
        podman("rm", "--force", "--time=0", *ids, check=False)
    volumes = podman("volume", "ls", "--quiet", "--filter", label, check=False).stdout.split()
    if volumes:
        podman("volume", "rm", "--force", *volumes, check=False)
    podman("pod", "rm", "--force", f"pod_{project}", check=False)
    podman("network", "rm", "--force", f"{project}_default", check=False)


def _sweep_abandoned() -> None:
    """Test projects an interrupted run left behind with nothing running: their network
    holds compose.yaml's fixed subnet, which a new project could not have."""
    networks = podman("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
    for network in networks:
        project = network.removesuffix("_default")
        if not (project.startswith("chat-test-") and network.endswith("_default")):
            continue
        running = podman(
            "ps", "--quiet", "--filter", f"label=io.podman.compose.project={project}", check=False
        ).stdout.split()
        if not running:
            _sweep(project)


@contextmanager
def running_stack(image: Image, directory: Path, settings: dict[str, str]) -> Iterator[Stack]:
    """compose.yaml and the nginx files copied into `directory` unchanged, a fresh key,
    `settings` in chat-service.env; up until a request through nginx finds the app ready
    (with Redis); down with its volumes when the block ends."""
    shutil.copy(DEPLOY / "compose.yaml", directory / "compose.yaml")
    shutil.copytree(DEPLOY / "nginx", directory / "nginx")
    (directory / "secrets").mkdir()
    # As the README makes it (48 random bytes, base64), with the default umask: readable by
    # the app's UID 10001, which the production start-up needs.
    (directory / "secrets" / "jwt-secret").write_text(secrets.token_urlsafe(48) + "\n")
    (directory / "chat-service.env").write_text(
        "".join(f"{key}={value}\n" for key, value in settings.items())
    )
    (directory / "compose.test.yaml").write_text(
        OVERRIDE.format(image=image.name, grace=STACK_GRACE)
    )
    _sweep_abandoned()
    stack = Stack(unique_name(), directory)
    try:
        stack.compose("up", "--detach", "--no-build")
        nginx = stack.container("nginx")
        address = podman("port", nginx, "8080/tcp").stdout.split()[0]
        stack.url = f"http://{address}"
        try:
            wait_until(lambda: answers(stack.url + "/readyz"), "the app ready through nginx", 90)
        except BaseException:
            print(stack.logs())
            raise
        yield stack
    finally:
        stack.compose("down", "--volumes", "--timeout=10", timeout=120, check=False)
        _sweep(stack.project)
