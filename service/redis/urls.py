"""What a `CHAT_REDIS_URL` names: one server (plain or TLS), a Sentinel-guarded primary,
or a Cluster (the schemes `limits` uses):

    redis://[:password@]host:port[/db]        one server
    rediss://[:password@]host:port[/db]       one server over TLS (CHAT_REDIS_CA_FILE: a private CA)
    redis+sentinel://[:password@]host:port[,host:port...]/service-name[/db]
    redis+cluster://[:password@]host:port[,host:port...]

The password of a Sentinel URL is the primary's; Sentinels are asked without one. A URL
that names nothing usable is a ValueError that says why, never with the password in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass(frozen=True)
class RedisTarget:
    """What a `CHAT_REDIS_URL` names."""

    mode: str  # single | sentinel | cluster
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def parse_url(url: str) -> RedisTarget:
    """The target a URL names; ValueError saying what is wrong with it."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisTarget("single", url, tls=url.startswith("rediss://"))
    mode = "sentinel" if url.startswith("redis+sentinel://") else "cluster"
    if not url.startswith(("redis+sentinel://", "redis+cluster://")):
        raise ValueError(f"use one of {', '.join(SCHEMES)}")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    service, db = "", 0
    if mode == "sentinel":
        if not segments or len(segments) > 2:
            raise ValueError("name the service: redis+sentinel://host:port[,...]/service-name[/db]")
        service = segments[0]
        if len(segments) == 2:
            if not segments[1].isdigit():
                raise ValueError(f"the database {segments[1]!r} is not a number")
            db = int(segments[1])
    elif segments:
        raise ValueError("a Cluster URL has no path: redis+cluster://host:port[,host:port...]")
    return RedisTarget(
        mode,
        url,
        tuple(hosts),
        service,
        db,
        unquote(password) or None,
        unquote(username) or None,
    )


def tls_options(target: RedisTarget, ca_file: str | None) -> dict[str, Any]:
    if not target.tls:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    return options
