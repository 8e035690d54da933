"""deploy/compose.yaml: valid against the Compose Specification's schema (the one
check-jsonschema ships), and shaped as the contract asks: app, Redis and nginx with health
checks, production mode, the key from a compose secret, nginx using the repository's site."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import REPO, run

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_redis_and_nginx_each_have_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"app", "redis", "nginx"} <= set(services)
    for name in ("app", "redis", "nginx"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "/healthz" in " ".join(services["app"]["healthcheck"]["test"])
    # Start order follows health, not just container start.
    assert services["app"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["app"]["condition"] == "service_healthy"


def test_app_runs_in_production_with_its_key_from_a_secret_file(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    env = app["environment"]
    assert env["CHAT_ENV"] == "production"
    assert "CHAT_JWT_SECRET" not in env, "a committed secret; use the compose secret"
    assert env["CHAT_JWT_SECRET_FILE"] == "/run/secrets/chat_jwt_secret"
    assert "chat_jwt_secret" in app["secrets"]
    secret_file = DEPLOY / compose["secrets"]["chat_jwt_secret"]["file"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(secret_file)], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, f"{secret_file} must be gitignored"
    assert env["CHAT_REDIS_URL"].startswith("redis://redis:")


def test_app_is_built_from_the_dockerfile_and_hardened(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    context = (DEPLOY / app["build"]["context"]).resolve()
    assert (context / app["build"]["dockerfile"]) == REPO / "Dockerfile"
    assert app["read_only"] is True
    assert any(entry.startswith("/tmp") for entry in app["tmpfs"])
    assert app["cap_drop"] == ["ALL"]
    assert "ports" not in app, "only nginx is published"
    # Docker's default 10 s would SIGKILL streams that CHAT_GRACEFUL_TIMEOUT lets finish.
    grace = int(app["stop_grace_period"].rstrip("s"))
    assert grace > int(app["environment"]["CHAT_GRACEFUL_TIMEOUT"]) + 5


def test_nginx_uses_the_repository_site_and_upstream(compose: dict[str, Any]) -> None:
    mounts = {}
    for volume in compose["services"]["nginx"]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (DEPLOY / source).resolve()
    assert mounts["/etc/nginx/conf.d/default.conf"] == DEPLOY / "nginx" / "chat-service.conf"
    assert mounts["/etc/nginx/conf.d/upstream.conf"] == DEPLOY / "nginx" / "upstream.conf"
    assert all(Path(path).is_file() for path in mounts.values())
    assert "server app:8000;" in (DEPLOY / "nginx" / "upstream.conf").read_text()


def test_only_nginx_is_a_trusted_proxy(compose: dict[str, Any]) -> None:
    """The app believes the X-Forwarded-For of nginx's fixed address alone, never a range:
    a client whose own address fell in a trusted range would be taken for a proxy, and the
    address it wrote believed (tests/deploy/test_compose_stack.py shows it through nginx)."""
    services = compose["services"]
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    nginx = ipaddress.ip_address(services["nginx"]["networks"]["default"]["ipv4_address"])
    assert services["app"]["environment"]["CHAT_TRUSTED_PROXIES"] == str(nginx)
    assert nginx in subnet


def test_the_app_keeps_its_address_across_restarts(compose: dict[str, Any]) -> None:
    """nginx resolves `app` once: the app's address is fixed, and so is its MAC address
    (the one Docker derives from the address: 02:42 and its four bytes), or nginx's
    neighbour table keeps sending to the container that was."""
    app = compose["services"]["app"]["networks"]["default"]
    address = ipaddress.ip_address(app["ipv4_address"])
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    assert app["mac_address"] == ":".join(f"{b:02x}" for b in (0x02, 0x42, *address.packed))


def test_redis_keeps_its_data_in_an_append_only_file_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    """Conversations are user data: Redis logs every write to its append-only file on a
    named volume (a restart of Redis keeps them; tests/deploy/test_compose_stack.py)."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    source, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data" and source in compose["volumes"]
    assert "tmpfs" not in redis
